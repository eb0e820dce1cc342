"""The warehouse: Parquet tables under FACTORY_HOME with a DuckDB catalog over them.

Layout::

    FACTORY_HOME/
      tables/<table>/[producer=<asset>/][language=<code>/]data.parquet
      warehouse.duckdb          one view per table over its Parquet files
      staging/ models/ reports/ published/

Every write is atomic (temp file in the same folder, fsync, rename), so a crash
never leaves a half-written table visible. Views read globs, so a new partition
is visible at once; catalog writes (creating a view for a new table) are
serialised with a file lock, and readers open the catalog read-only.

A home can be copied or moved: nothing stored in a table holds the home's absolute
path (checkpoint paths under the home are stored relative to it and resolved on
read), and the catalog records the home it was built for, so opening a copied or
moved home rebuilds its views over the files where they are now.

Damage is named, not propagated:

- A table file that cannot be read (truncated, garbled) raises CorruptTable naming the
  file, its table and the `factory run` that rewrites it, from `read_table` and from SQL.
  In the catalog such a table's view is replaced by one that raises the same message, so
  every other view still builds; the next write of the table restores its real view.
- Lineage is append-only, one small file per materialization, read whole by status,
  `factory lineage` and rerun hints. One unreadable lineage file must not hide all the
  others, so it is moved to `tables/.corrupt/lineage/` with a warning naming it (and listed
  in `Warehouse.problems`). Moving it, rather than listing the good files in the view,
  keeps the lineage view a plain glob: any DuckDB client sees it, and lineage written
  later appears without rebuilding the view. Where the home is read-only the file is
  skipped (and reported) instead.
- A home whose path holds glob characters (`[`, `]`, `*`, `?`) works: polars reads
  single files with globbing off, the views escape the characters DuckDB would expand,
  and, because DuckDB takes a `?` in a database path for the start of URL parameters,
  such a home's catalog is written in a temporary folder and moved in.
- Disk full, read-only home, permission denied or a file where a folder should be:
  one WarehouseWriteError naming the home, the path and what to do (warehouse.home).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from filelock import FileLock

from warehouse import schemas
from warehouse.fs import HashingWriter, is_s3
from warehouse.home import WarehouseWriteError, home_option, home_url, os_errno, partition_dir, resolve_home, writing
from warehouse.sql import ensure_read_only, printable

__all__ = ["CorruptTable", "Warehouse", "WarehouseWriteError", "WriteResult", "atomic_write_parquet", "file_version"]

logger = logging.getLogger(__name__)

DATA_FILE = "data.parquet"
CATALOG_FILE = "warehouse.duckdb"
CATALOG_HOME_MARKER = ".views/.home"  # the home the catalog's views were built for
DEFERRED_VIEWS = ".views/.deferred"  # tables whose view a write left for later (the catalog was held open)
VERSIONS_DIR = ".versions"  # data versions recorded at write time: <home>/.versions/<file>.json
PATH_COLUMNS = {"checkpoints": "path"}  # tables whose paths under the home are stored relative to it
APPEND_ONLY = {"lineage"}  # one file per write: an unreadable one is set aside, not fatal
CORRUPT_DIR = ".corrupt"  # under tables/: unreadable append-only files, kept for inspection
# Producer folders an asset writes beside its own output (they have no lineage row of their own):
# (folder name prefix, the asset that rewrites them). Other producer folders are named after their asset.
SIDE_WRITERS = (("native_vs_translated", "preference_pairs"), ("eval_answers_", "judgments"))
_GLOB_CHARS = re.compile(r"([\[*?])")


class CorruptTable(ValueError):
    """A table file exists but cannot be read (truncated, garbled). The message names the file,
    its table, why, and the `factory run` that rewrites it."""


@dataclass(frozen=True)
class WriteResult:
    table: str
    path: Path | str  # the written file: a local path, or an s3:// URL
    rows: int
    data_version: str
    relpath: str = ""  # the file relative to the home (posix), as lineage stores it
    schema: pl.Schema | None = None  # the columns as stored (conformed, with partition columns)


def _now() -> datetime:
    return datetime.now(UTC)


def file_version(path: Path) -> str:
    """Content hash of a file (16 hex chars): the data version of a table partition."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_parquet(df: pl.DataFrame, path: Path, home: Path | None = None) -> str:
    """Write `df` to `path` through a temp file and a rename; a failure of the disk or its
    permissions is one WarehouseWriteError naming `home` (default: the file's folder).
    Returns the file's data version (file_version's hash), computed from the bytes as written."""
    return _atomic_write(df, path, home)[0]


def _atomic_write(df: pl.DataFrame, path: Path, home: Path | None = None) -> tuple[str, os.stat_result]:
    """atomic_write_parquet, also returning the file's stat as written (taken before the rename, so
    it is this write's even if another writer replaces the file right after)."""
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with writing(home or path.parent, path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                out = HashingWriter(f)
                df.write_parquet(out, compression="zstd", statistics=True)
                f.flush()
                os.fsync(f.fileno())
                st = os.fstat(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return out.version, st


def glob_escape(path: str) -> str:
    """`path` with DuckDB's glob characters matched literally (`[` `*` `?` as one-character classes)."""
    return _GLOB_CHARS.sub(r"[\1]", path)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Warehouse:
    """Read and write the factory's tables. Cheap to construct; holds no open connection.

    `Warehouse(home)` with an S3 URL (or FACTORY_HOME=s3://...) is a warehouse.s3.S3Warehouse:
    the same methods over manifests on object storage, with `home` its local folder."""

    def __new__(cls, home: str | os.PathLike | None = None):
        if cls is Warehouse and is_s3(home_url(home)):
            # warehouse.s3 builds on this module, so it is found as a subclass (the warehouse package
            # imports it) rather than imported from here.
            backend = next((c for c in Warehouse.__subclasses__() if getattr(c, "scheme", None) == "s3"), None)
            if backend is None:
                raise RuntimeError("the S3 warehouse is not loaded: import warehouse (its package) first")
            return super().__new__(backend)
        return super().__new__(cls)

    def __init__(self, home: str | os.PathLike | None = None):
        self.url = home_url(home)  # where the tables live: the local folder, or s3://bucket/prefix
        self.home = resolve_home(home)  # the local folder (models, staging, catalog, locks)
        self.tables_dir = self.home / "tables"
        self.catalog_path = self.home / CATALOG_FILE
        self._lock = FileLock(str(self.home / ".catalog.lock"), timeout=120)
        self.problems: list[str] = []  # damage met and worked around (set-aside lineage files), for status

    # -- folders -----------------------------------------------------------------
    def dir(self, *parts: str) -> Path:
        """A folder under the home (staging, models, reports, published, ...), created."""
        path = self.home.joinpath(*parts)
        with writing(self.home, path, "create"):
            path.mkdir(parents=True, exist_ok=True)
        return path

    def table_path(self, table: str, partition: dict[str, str] | None = None) -> Path:
        return partition_dir(self.tables_dir / table, partition) / DATA_FILE

    # -- writing -----------------------------------------------------------------
    def write_table(self, table: str, df: pl.DataFrame, partition: dict[str, str] | None = None) -> WriteResult:
        """Replace one partition of `table` (or the whole unpartitioned table) atomically.

        Partition keys become columns too, so the Parquet files are self-describing.
        Known tables are conformed to their declared schema first.
        """
        for key, value in (partition or {}).items():
            if key not in df.columns:
                df = df.with_columns(pl.lit(value, dtype=pl.String).alias(key))
        if table in schemas.TABLES:
            df = schemas.conform(df, schemas.TABLES[table])
        if table in PATH_COLUMNS:
            df = df.with_columns(pl.col(PATH_COLUMNS[table]).map_elements(self.relative, return_dtype=pl.String))
        path, version = self._commit(table, partition, df)
        self.ensure_view(table)
        return WriteResult(table, path, df.height, version, self.rel(path), df.schema)

    def _commit(self, table: str, partition: dict[str, str] | None, df: pl.DataFrame) -> tuple[Path, str]:
        """Replace the partition's file atomically (temp file, rename); its version is recorded beside
        the home's other derived state, keyed by the file's size and mtime, so reads need not hash it."""
        path = self.table_path(table, partition)
        version, st = _atomic_write(df, path, self.home)
        self._record_version(path, version, st)
        return path, version

    def _version_record(self, path: Path) -> Path:
        return self.home / VERSIONS_DIR / f"{path.relative_to(self.home).as_posix()}.json"

    def _record_version(self, path: Path, version: str, st: os.stat_result) -> None:
        """Record `version` for the file whose stat as written is `st` (not the path's stat now: a
        second writer may have replaced the file since, and its data must not get this version)."""
        record = self._version_record(path)
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{record.name}.tmp-{uuid.uuid4().hex[:8]}")
            tmp.write_text(json.dumps({"version": version, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
            os.replace(tmp, record)
        except OSError:  # only a shortcut: version() hashes the file when the record is missing
            pass

    def _file_version(self, path: Path) -> str:
        """The recorded version of a table file when the file is the one recorded, else its hash."""
        try:
            record = json.loads(self._version_record(path).read_text())
            st = path.stat()
            if record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns:
                return str(record["version"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return file_version(path)

    def append(self, table: str, df: pl.DataFrame, name: str) -> Path | str:
        """Add a new file to an append-only table (lineage); `name` must be unique."""
        if table in schemas.TABLES:
            df = schemas.conform(df, schemas.TABLES[table])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        path = self._put(table, f"{safe}.parquet", df)
        self.ensure_view(table)
        return path

    def _put(self, table: str, name: str, df: pl.DataFrame) -> Path | str:
        path = self.tables_dir / table / name
        atomic_write_parquet(df, path, self.home)
        return path

    def rel(self, path: Path | str) -> str:
        """A table file's path relative to the home (posix), as lineage and messages name it."""
        return Path(path).relative_to(self.home).as_posix()

    def quarantine(self, asset: str, partition: str | None, rows: pl.DataFrame, run_id: str) -> int:
        """Store rejected rows (row_key, reason, payload, and optionally code) for one asset partition;
        replaces that partition's previous quarantine so reruns do not double count. Without a
        `code` column, the code is the reason's lead (its text before the first ':'), slugged."""
        part = partition or schemas.UNPARTITIONED
        rows = rows if rows.height else schemas.rejected_frame()
        code = pl.col("code").cast(pl.String) if "code" in rows.columns else reason_code(pl.col("reason"))
        df = rows.select(
            pl.lit(asset).alias("asset"),
            pl.lit(part).alias("partition"),
            pl.col("row_key").cast(pl.String),
            code.alias("code"),
            pl.col("reason").cast(pl.String),
            pl.col("payload").cast(pl.String),
            pl.lit(run_id).alias("run_id"),
            pl.lit(_now()).cast(pl.Datetime("us", "UTC")).alias("quarantined_at"),
        )
        self.write_table("quarantine", df, {"asset": asset, "partition": part})
        return df.height

    def record_lineage(
        self,
        *,
        asset: str,
        table: str,
        partition: str | None,
        run_id: str,
        code_version: str,
        result: WriteResult,
        input_versions: dict[str, str],
        started_at: datetime,
    ) -> None:
        row = pl.DataFrame(
            {
                "asset": [asset],
                "table": [table],
                "partition": [partition or ""],
                "run_id": [run_id],
                "code_version": [code_version],
                "data_version": [result.data_version],
                "input_versions": [json.dumps(input_versions, sort_keys=True)],
                "row_count": [result.rows],
                "path": [result.relpath or self.rel(result.path)],
                "started_at": [started_at],
                "finished_at": [_now()],
            }
        )
        stamp = _now().strftime("%Y%m%dT%H%M%S%f")
        self.append("lineage", row, f"{stamp}-{run_id[:8]}-{asset}-{partition or 'all'}")

    # -- reading -----------------------------------------------------------------
    def files(self, table: str, partition: dict[str, str] | None = None) -> list[Path]:
        root = partition_dir(self.tables_dir / table, partition)
        if not root.exists():
            return []
        return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))

    def has(self, table: str, partition: dict[str, str] | None = None) -> bool:
        return bool(self.files(table, partition))

    def read_table(self, table: str, partition: dict[str, str] | None = None, columns: list[str] | None = None) -> pl.DataFrame:
        """All files of `table` (or of one partition) as one DataFrame; missing columns are null.

        An unreadable file raises CorruptTable (naming it and the asset to rerun); in an
        append-only table (lineage) it is set aside with a warning and the rest is read."""
        frames = []
        for f in self.files(table, partition):
            try:
                frames.append(self._read(f, columns))
            except _UNREADABLE as exc:
                if not _is_corruption(exc):
                    raise
                if table not in APPEND_ONLY:
                    raise self.corrupt(table, f, exc) from exc
                self._set_aside(f, exc)
        if not frames:
            if table in schemas.TABLES:
                return schemas.empty(schemas.TABLES[table])
            raise FileNotFoundError(f"table {table!r} has no data under {self.tables_dir}/{table}")
        df = pl.concat(frames, how="diagonal_relaxed")
        col = PATH_COLUMNS.get(table)
        if col in df.columns:
            df = df.with_columns(pl.col(col).map_elements(self.resolve, return_dtype=pl.String))
        return df

    # -- damage ------------------------------------------------------------------
    def _read(self, path: Path | str, columns: list[str] | None = None) -> pl.DataFrame:
        return _read_parquet(path, columns)

    def _read_error(self, path: Path | str, whole: bool) -> BaseException | None:
        return _read_error(path, whole)

    def corrupt(self, table: str, path: Path | str, cause: BaseException) -> CorruptTable:
        """The CorruptTable error for an unreadable file of `table`: the file, why, and what to rerun."""
        rel = self.rel(path)
        asset, part = self._writer(table, path)
        rerun = f"factory run --select {asset}" + (f" --partition {part}" if part else "") + home_option(self.url)
        return CorruptTable(f"{rel} of table {table} cannot be read ({_first_line(cause)}): rerun `{rerun}`")

    def _writer(self, table: str, path: Path | str) -> tuple[str, str | None]:
        """The asset (and language partition) that rewrites `path`: its lineage row when there is one,
        else the quarantine's asset folder, the producer folder, or the table's own name."""
        rel = self.rel(path)
        segments = dict(p.split("=", 1) for p in rel.split("/")[2:-1] if "=" in p)  # tables/<table>/.../<file>
        if table not in APPEND_ONLY and self.has("lineage"):
            try:
                rows = self.read_table("lineage", columns=["asset", "partition", "path", "finished_at"])
                rows = rows.filter(pl.col("path") == rel).sort("finished_at")
            except Exception:  # noqa: BLE001 - a hint must never hide the error it explains
                rows = pl.DataFrame()
            if rows.height:
                return rows["asset"][-1], rows["partition"][-1] or None
        if table == "quarantine" and "asset" in segments:
            part = segments.get("partition")
            return segments["asset"], None if part in (None, schemas.UNPARTITIONED) else part
        producer = segments.get("producer")
        if producer:
            producer = next((asset for prefix, asset in SIDE_WRITERS if producer.startswith(prefix)), producer)
        return producer or table, segments.get("language")

    def _set_aside(self, path: Path, cause: BaseException) -> None:
        """Move an unreadable append-only file to tables/.corrupt/ (skip it where the home is read-only)."""
        rel = path.relative_to(self.home).as_posix()
        target = self.tables_dir / CORRUPT_DIR / path.relative_to(self.tables_dir)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            note = f"unreadable {rel} set aside to {target.relative_to(self.home).as_posix()}"
        except OSError as exc:
            if not path.exists():
                return  # another reader moved it first
            note = f"unreadable {rel} skipped (cannot move it aside: {exc.strerror})"
        note += f" ({_first_line(cause)}); the rows of that one write are missing from {path.parent.name}"
        logger.warning(note)
        self.problems.append(note)

    def set_aside_unreadable(self, table: str) -> int:
        """Set aside every unreadable file of an append-only `table`; returns how many."""
        bad = [(f, exc) for f in self.files(table) if (exc := self._read_error(f, whole=True)) is not None]
        for f, exc in bad:
            self._set_aside(f, exc)
        return len(bad)

    def set_aside_files(self) -> list[Path]:
        """Files set aside under tables/.corrupt/ (by this or an earlier reader), for status to show."""
        root = self.tables_dir / CORRUPT_DIR
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def diagnose(self, table: str) -> CorruptTable | None:
        """The first file of `table` whose Parquet footer cannot be read, as a CorruptTable; None if all read."""
        for f in self.files(table):
            if (exc := self._read_error(f, whole=table in APPEND_ONLY)) is not None:
                return self.corrupt(table, f, exc)
        return None

    # -- paths -------------------------------------------------------------------
    def relative(self, path: str | None) -> str | None:
        """`path` relative to the home when it lies under it (so the home can move), else as given."""
        if not path:
            return path
        p = Path(path)
        if p.is_absolute():
            try:
                return p.resolve().relative_to(self.home).as_posix()
            except ValueError:
                return path
        return path

    def resolve(self, path: str | None) -> str | None:
        """A stored path made absolute against the current home when it names something under it;
        other values (absolute paths elsewhere, hub model names) are returned as stored."""
        if not path or Path(path).is_absolute():
            return path
        under = self.home / path
        return str(under) if under.exists() else path

    def version(self, table: str, partition: dict[str, str] | None = None) -> str:
        """Data version of a table partition (hash of its files), '' when absent."""
        return _combine_versions([self._file_version(f) for f in self.files(table, partition)])

    # -- catalog -----------------------------------------------------------------
    def _view_sql(self, table: str) -> str:
        glob = glob_escape(str(self.tables_dir / table)) + "/**/*.parquet"
        return (
            f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM '
            f"read_parquet({_sql_str(glob)}, union_by_name = true, hive_partitioning = false)"
        )

    def _prepare(self, con) -> None:
        """Make the home's files readable by a DuckDB connection (nothing to do on a local disk)."""

    def _allowed_directories(self) -> list[str]:
        # The views name the folder with glob characters escaped; DuckDB checks that spelling too.
        return sorted({str(self.tables_dir) + "/", glob_escape(str(self.tables_dir)) + "/"})

    def _signatures(self, tables: list[str]) -> dict[str, str]:
        """What each table's view was built from, kept in its marker: nothing on a local disk, where
        views read globs and see new files at once."""
        return dict.fromkeys(tables, "")

    def _create_view(self, con, table: str) -> bool:
        """Create `table`'s view; if its files cannot be read, set aside unreadable append-only files and
        retry, else create a view that raises the CorruptTable message. True when the real view stands."""
        import duckdb

        try:
            con.execute(self._view_sql(table))
            return True
        except duckdb.Error as exc:
            failure: BaseException = exc
        if table in APPEND_ONLY and self.set_aside_unreadable(table):
            if not self.files(table):
                con.execute(f'DROP VIEW IF EXISTS "{table}"')
                return False
            try:
                con.execute(self._view_sql(table))
                return True
            except duckdb.Error as exc:
                failure = exc
        problem = self.diagnose(table)
        message = f"CorruptTable: {problem}" if problem else f"the view of table {table} cannot be built: {_first_line(failure)}"
        logger.warning(message)
        con.execute(f'CREATE OR REPLACE VIEW "{table}" AS SELECT error({_sql_str(message)}) AS problem')
        return False

    def ensure_view(self, table: str) -> None:
        """Create the table's view in warehouse.duckdb if it is missing (serialised writers). Views
        are derived state: while another process holds the catalog open (a DuckDB shell, a notebook,
        a long `factory sql`), the view is left for the next write or `connect()` to build, with a
        warning, instead of failing a write whose data is already in place."""
        marker = self.home / ".views" / table
        if marker.exists() and self._catalog_current():
            return
        self._refresh_if_free(None if not self._catalog_current() else [table])

    def sync_catalog(self) -> list[str]:
        """Bring the views up to date before a query: all of them when the catalog was built for
        another home (or not yet), else those a write left for later because another process held
        the catalog (DEFERRED_VIEWS). Best effort: a catalog still held, or one this user cannot
        write, leaves them for the next query. Returns the tables whose views were (re)made."""
        if not self._catalog_current():
            # no tables, no catalog: a folder that is not a home (yet) gets no files from a query
            return self.refresh_catalog() if self.tables() else []
        folder = self.home / DEFERRED_VIEWS
        deferred = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if not deferred:
            return []
        try:
            return deferred if self._refresh_if_free(deferred) else []
        except WarehouseWriteError as exc:  # e.g. a home this user may read but not write
            logger.warning("the views of %s could not be made: %s", ", ".join(deferred), exc)
            return []

    def _refresh_if_free(self, tables: list[str] | None) -> bool:
        """refresh_catalog(tables); False, with a warning and the tables recorded in DEFERRED_VIEWS,
        when another process holds the catalog (a lock)."""
        import duckdb

        folder = self.home / DEFERRED_VIEWS
        try:
            self.refresh_catalog(tables, attempts=8)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            for table in tables or []:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / table).touch()
            logger.warning("the catalog %s is held open by another process; the views of %s are made by the next query "
                           "(or write of that table)", self.catalog_path, ", ".join(tables) if tables else "every table")
            return False
        for table in tables or []:
            (folder / table).unlink(missing_ok=True)
        return True

    def _catalog_current(self) -> bool:
        """The catalog exists and was built for this home (not for the folder it was copied from)."""
        marker = self.home / CATALOG_HOME_MARKER
        return self.catalog_path.exists() and marker.exists() and marker.read_text() == self.url

    def refresh_catalog(self, tables: list[str] | None = None, attempts: int = 40) -> list[str]:
        """(Re)create views for `tables` (default: every table with data, from scratch). A catalog
        file DuckDB cannot open (zeroed, garbled) is replaced: views are derived state. Another
        process holding the catalog is waited for, `attempts` times a quarter second."""
        import duckdb

        names = [t for t in (tables or self.tables()) if self.files(t)]
        signatures = self._signatures(names)  # before the views: a change meanwhile shows at the next check
        with writing(self.home, self.catalog_path, "update the catalog"), self._lock:
            if tables is None:
                self.catalog_path.unlink(missing_ok=True)  # rebuilt whole: no view may point elsewhere
                self.catalog_path.with_name(self.catalog_path.name + ".wal").unlink(missing_ok=True)
            with self._catalog_file() as path:
                try:
                    con = _retry(lambda: duckdb.connect(str(path)), attempts)
                except duckdb.Error as exc:
                    if "lock" in str(exc).lower() or tables is None:
                        raise
                    con = None
                if con is not None:
                    try:
                        self._prepare(con)
                        built = {t: self._create_view(con, t) for t in names}
                    finally:
                        con.close()
            if con is None:  # not a DuckDB file any more (zeroed, garbled): views are derived state
                self.catalog_path.unlink(missing_ok=True)
                return self.refresh_catalog(None)
            views = self.home / ".views"
            views.mkdir(exist_ok=True)
            for t, ok in built.items():  # a table without its real view is rebuilt by its next write
                if ok:
                    (views / t).write_text(signatures.get(t, ""))
                else:
                    (views / t).unlink(missing_ok=True)
            if tables is None:
                (self.home / CATALOG_HOME_MARKER).write_text(self.url)
                shutil.rmtree(self.home / DEFERRED_VIEWS, ignore_errors=True)  # every view was just made
        return names

    @contextmanager
    def _catalog_file(self) -> Iterator[Path]:
        """Where DuckDB writes the catalog: in place, except in a home whose path holds `?`, which
        DuckDB reads as the start of URL parameters (its write-ahead log would go to `a.wal?b/...`).
        There the catalog is updated in a temporary folder and moved in (copy beside it, rename)."""
        if "?" not in str(self.catalog_path):
            yield self.catalog_path
            return
        with tempfile.TemporaryDirectory(prefix="factory-catalog-") as tmp:
            work = Path(tmp) / CATALOG_FILE
            if self.catalog_path.exists():
                shutil.copyfile(self.catalog_path, work)
            yield work
            staged = self.catalog_path.with_name(f".{CATALOG_FILE}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                shutil.copyfile(work, staged)
                os.replace(staged, self.catalog_path)
            finally:
                staged.unlink(missing_ok=True)

    def connect(self):
        """A read-only DuckDB connection to the catalog that can read the home's tables and nothing
        else: no file outside `tables/`, no extensions, no settings changes (DuckDB enforces it)."""
        import duckdb

        self.sync_catalog()
        if not self.catalog_path.exists():
            raise FileNotFoundError(f"no warehouse yet at {self.url}: it has no tables (run `factory demo{home_option(self.url)}` "
                                    f"or `factory run{home_option(self.url)}` first)")
        def open_read_only():
            return _retry(lambda: duckdb.connect(str(self.catalog_path), read_only=True, config={
                "autoinstall_known_extensions": False, "autoload_known_extensions": False,
            }))

        try:
            con = open_read_only()
        except duckdb.Error as exc:
            if "lock" in str(exc).lower():
                raise
            self.refresh_catalog()  # not a DuckDB file any more (zeroed, garbled): views are derived state
            con = open_read_only()
        self._prepare(con)
        allowed = self._allowed_directories()
        con.execute(f"SET allowed_directories = [{', '.join(map(_sql_str, allowed))}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def sql(self, query: str, fmt: str | None = None) -> pl.DataFrame:
        """Run a read-only query against the catalog (`warehouse.sql` says what is refused). With
        `fmt` (table, csv or json), what that format cannot show comes back as text (printable).

        When it fails over damaged files: unreadable lineage files are set aside and the query
        runs again; an unreadable file of another table it names raises CorruptTable."""
        import duckdb

        for attempt in (0, 1):
            con = self.connect()
            try:
                ensure_read_only(query, con)
                rel = con.sql(query)
                if rel is None:
                    return pl.DataFrame()
                return (printable(rel, fmt) if fmt else rel).pl()
            except duckdb.ParserException:
                raise
            except duckdb.Error as exc:
                failure = exc
            finally:
                con.close()
            named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query)) & set(self.tables())
            lineage = sorted(named & APPEND_ONLY)
            if attempt == 0 and sum(self.set_aside_unreadable(t) for t in lineage):
                self.refresh_catalog(lineage)
                continue
            if "CorruptTable: " in str(failure):
                raise CorruptTable(str(failure).split("CorruptTable: ", 1)[1].splitlines()[0]) from failure
            problem = next((p for t in sorted(named) if (p := self.diagnose(t)) is not None), None)
            if problem is not None:
                raise problem from failure
            raise failure
        raise AssertionError("unreachable")

    def tables(self) -> list[str]:
        if not self.tables_dir.exists():
            return []
        return sorted(
            p.name for p in self.tables_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and self.files(p.name)
        )


def reason_code(reason: pl.Expr) -> pl.Expr:
    """A short code from a free-text reason: its lead before ':' or '(', lower-case, non-alphanumerics as '_'."""
    lead = reason.cast(pl.String).str.split(":").list.first().str.split("(").list.first()
    return lead.str.strip_chars().str.to_lowercase().str.replace_all(r"[^a-z0-9]+", "_").str.strip_chars("_").str.slice(0, 48)


_UNREADABLE = (pl.exceptions.ComputeError, pl.exceptions.PanicException, OSError)


def _is_corruption(exc: BaseException) -> bool:
    """A read error caused by the file's content (or a failing disk), not by a missing column or permissions."""
    if isinstance(exc, OSError):
        return os_errno(exc) == errno.EIO
    return True


def _read_parquet(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    # glob=False: a home named `run [1]` is a path, not a pattern.
    return pl.read_parquet(path, columns=columns, glob=False)


def _read_error(path: Path, whole: bool) -> BaseException | None:
    """Why `path` cannot be read (its footer, or `whole` the file), or None when it reads."""
    try:
        if whole:
            _read_parquet(path)
        else:
            with open(path, "rb") as f:
                pl.read_parquet_schema(f)
    except _UNREADABLE as exc:
        return exc if _is_corruption(exc) else None
    return None


def _combine_versions(versions: list[str]) -> str:
    """One file's version, or a hash of several files' versions in order; '' for none."""
    if len(versions) == 1:
        return versions[0]
    h = hashlib.blake2b(digest_size=8)
    for v in versions:
        h.update(v.encode())
    return h.hexdigest() if versions else ""


def _retry(fn, attempts: int = 40, delay: float = 0.25) -> Any:
    """DuckDB refuses a second process while one writes: wait briefly and try again."""
    import duckdb

    for i in range(attempts):
        try:
            return fn()
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")
