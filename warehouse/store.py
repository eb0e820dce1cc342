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
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from filelock import FileLock

from factory import schemas
from warehouse.home import partition_dir, resolve_home

DATA_FILE = "data.parquet"
CATALOG_FILE = "warehouse.duckdb"
CATALOG_HOME_MARKER = ".views/.home"  # the home the catalog's views were built for
PATH_COLUMNS = {"checkpoints": "path"}  # tables whose paths under the home are stored relative to it


@dataclass(frozen=True)
class WriteResult:
    table: str
    path: Path
    rows: int
    data_version: str


def _now() -> datetime:
    return datetime.now(UTC)


def file_version(path: Path) -> str:
    """Content hash of a file (16 hex chars): the data version of a table partition."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_parquet(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        df.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Warehouse:
    """Read and write the factory's tables. Cheap to construct; holds no open connection."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = resolve_home(home)
        self.tables_dir = self.home / "tables"
        self.catalog_path = self.home / CATALOG_FILE
        self._lock = FileLock(str(self.home / ".catalog.lock"), timeout=120)

    # -- folders -----------------------------------------------------------------
    def dir(self, *parts: str) -> Path:
        """A folder under the home (staging, models, reports, published, ...), created."""
        path = self.home.joinpath(*parts)
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
        path = self.table_path(table, partition)
        atomic_write_parquet(df, path)
        self.ensure_view(table)
        return WriteResult(table, path, df.height, file_version(path))

    def append(self, table: str, df: pl.DataFrame, name: str) -> Path:
        """Add a new file to an append-only table (lineage); `name` must be unique."""
        if table in schemas.TABLES:
            df = schemas.conform(df, schemas.TABLES[table])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        path = self.tables_dir / table / f"{safe}.parquet"
        atomic_write_parquet(df, path)
        self.ensure_view(table)
        return path

    def quarantine(self, asset: str, partition: str | None, rows: pl.DataFrame, run_id: str) -> int:
        """Store rejected rows (row_key, reason, payload, and optionally code) for one asset partition;
        replaces that partition's previous quarantine so reruns do not double count. Without a
        `code` column, the code is the reason's lead (its text before the first ':'), slugged."""
        part = partition or "all"
        rows = rows if rows.height else schemas.empty({"row_key": pl.String, "reason": pl.String, "payload": pl.String})
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
                "path": [str(result.path.relative_to(self.home))],
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
        """All files of `table` (or of one partition) as one DataFrame; missing columns are null."""
        files = self.files(table, partition)
        if not files:
            if table in schemas.TABLES:
                return schemas.empty(schemas.TABLES[table])
            raise FileNotFoundError(f"table {table!r} has no data under {self.tables_dir / table}")
        frames = [pl.read_parquet(f, columns=columns) for f in files]
        df = pl.concat(frames, how="diagonal_relaxed")
        col = PATH_COLUMNS.get(table)
        if col in df.columns:
            df = df.with_columns(pl.col(col).map_elements(self.resolve, return_dtype=pl.String))
        return df

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
        files = self.files(table, partition)
        if len(files) == 1:
            return file_version(files[0])
        h = hashlib.blake2b(digest_size=8)
        for f in files:
            h.update(file_version(f).encode())
        return h.hexdigest() if files else ""

    # -- catalog -----------------------------------------------------------------
    def _view_sql(self, table: str) -> str:
        glob = str(self.tables_dir / table / "**" / "*.parquet").replace("'", "''")
        return (
            f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM '
            f"read_parquet('{glob}', union_by_name = true, hive_partitioning = false)"
        )

    def ensure_view(self, table: str) -> None:
        """Create the table's view in warehouse.duckdb if it is missing (serialised writers)."""
        marker = self.home / ".views" / table
        if marker.exists() and self._catalog_current():
            return
        self.refresh_catalog(None if not self._catalog_current() else [table])
        marker.parent.mkdir(exist_ok=True)
        marker.touch()

    def _catalog_current(self) -> bool:
        """The catalog exists and was built for this home (not for the folder it was copied from)."""
        marker = self.home / CATALOG_HOME_MARKER
        return self.catalog_path.exists() and marker.exists() and marker.read_text() == str(self.home)

    def refresh_catalog(self, tables: list[str] | None = None) -> list[str]:
        """(Re)create views for `tables` (default: every table with data, from scratch). A catalog
        file DuckDB cannot open (zeroed, garbled) is replaced: views are derived state."""
        import duckdb

        names = [t for t in (tables or self.tables()) if self.files(t)]
        with self._lock:
            if tables is None:
                self.catalog_path.unlink(missing_ok=True)  # rebuilt whole: no view may point elsewhere
                self.catalog_path.with_name(self.catalog_path.name + ".wal").unlink(missing_ok=True)
            try:
                con = _retry(lambda: duckdb.connect(str(self.catalog_path)))
            except duckdb.Error as exc:
                if "lock" in str(exc).lower():
                    raise
                self.catalog_path.unlink(missing_ok=True)
                return self.refresh_catalog(None)
            try:
                for t in names:
                    con.execute(self._view_sql(t))
            finally:
                con.close()
            if tables is None:
                marker = self.home / CATALOG_HOME_MARKER
                marker.parent.mkdir(exist_ok=True)
                marker.write_text(str(self.home))
        return names

    def connect(self):
        """A read-only DuckDB connection to the catalog that can read the home's tables and nothing
        else: no file outside `tables/`, no extensions, no settings changes (DuckDB enforces it)."""
        import duckdb

        if not self._catalog_current():
            self.refresh_catalog()
            if not self.catalog_path.exists():
                raise FileNotFoundError(f"no warehouse yet at {self.home}: materialize something first")
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
        allowed = str(self.tables_dir).replace("'", "''") + "/"
        con.execute(f"SET allowed_directories = ['{allowed}']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def sql(self, query: str) -> pl.DataFrame:
        """Run a read-only query against the catalog (`warehouse.sql` says what is refused)."""
        from warehouse.sql import ensure_read_only

        con = self.connect()
        try:
            ensure_read_only(query, con)
            rel = con.sql(query)
            return rel.pl() if rel is not None else pl.DataFrame()
        finally:
            con.close()

    def tables(self) -> list[str]:
        if not self.tables_dir.exists():
            return []
        return sorted(p.name for p in self.tables_dir.iterdir() if p.is_dir() and self.files(p.name))


def reason_code(reason: pl.Expr) -> pl.Expr:
    """A short code from a free-text reason: its lead before ':' or '(', lower-case, non-alphanumerics as '_'."""
    lead = reason.cast(pl.String).str.split(":").list.first().str.split("(").list.first()
    return lead.str.strip_chars().str.to_lowercase().str.replace_all(r"[^a-z0-9]+", "_").str.strip_chars("_").str.slice(0, 48)


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
