"""The warehouse on object storage: FACTORY_HOME=s3://bucket/prefix.

S3 has no rename, so a table partition is committed by a pointer, not by moving a file::

    s3://bucket/prefix/tables/<table>/[producer=<asset>/][language=<code>/]
        _data/<write id>.parquet    each write's data, under its own never-reused key
        _manifest.json              the commit: names the one data file readers see
    s3://bucket/prefix/tables/lineage/<stamp>-<run>-<asset>-<partition>.parquet

- A write uploads its data under a fresh `_data/<write id>` key (a multipart upload that a crash
  aborts or leaves unnamed), then PUTs the partition's manifest: one small object naming that
  file, its row count and data version. An S3 PUT replaces an object whole, so a reader sees the
  old manifest or the new one, never half a partition, and a rerun replaces the pointer: it never
  doubles a partition. Two writers of one partition: the last manifest wins, whole.
- Data versions are BLAKE2b digests of the bytes as they are uploaded (the same digest
  `file_version` computes of a local file), recorded in the manifest: reads never hash data.
- Append-only tables (lineage) need no manifest: each write is one new object, and one PUT is atomic.
- Superseded and orphaned data files of a partition are deleted by its next write once older
  than GRACE_S, so a reader that has just read the old manifest can still read its file.
- The DuckDB catalog is local (warehouse.fs: the home's local folder) and derived: its views
  list the files the manifests name, and `connect` rebuilds the views whose manifests changed
  (one LIST of the tables; only changed manifests are fetched). DuckDB reads the objects through
  s3fs (`register_filesystem`), so no DuckDB extension is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

import polars as pl

from warehouse.fs import S3_SCHEME, HashingWriter, endpoint_url, s3_filesystem
from warehouse.home import partition_dir
from warehouse.store import (
    _UNREADABLE,
    APPEND_ONLY,
    CORRUPT_DIR,
    Warehouse,
    _combine_versions,
    _first_line,
    _is_corruption,
    _sql_str,
)

__all__ = ["GRACE_S", "MANIFEST", "ObjectStoreError", "S3Warehouse"]

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
DATA_DIR = "_data"
GRACE_S = 900.0  # superseded data files outlive their manifest this long (readers in flight)
MANIFEST_FORMAT = 1
# botocore's errors that s3fs lets through unchanged (no credentials, no server)
_BOTOCORE_ACCESS_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "EndpointConnectionError",
                           "ConnectTimeoutError", "ReadTimeoutError"}


class ObjectStoreError(RuntimeError):
    """The object store refused or could not be reached: names the home, what was tried and what to check."""


def _advice() -> str:
    server = endpoint_url() or "AWS (no AWS_ENDPOINT_URL)"
    return (f"check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, that the bucket exists, and the server "
            f"({server}; set AWS_ENDPOINT_URL for S3 servers other than AWS)")


class S3Warehouse(Warehouse):
    """Warehouse over `s3://bucket/prefix`: tables as manifests over write-scoped data files."""

    scheme = "s3"

    def __init__(self, home: str | os.PathLike | None = None):
        super().__init__(home)
        self.fs = s3_filesystem()
        self.root = self.url[len(S3_SCHEME):]  # bucket/prefix, as s3fs names keys
        self.tables_dir = f"{self.url}/tables"
        self._manifests: dict[str, tuple[str, dict]] = {}  # key -> (ETag, manifest): fetched once per change

    # -- names -------------------------------------------------------------------
    def _key(self, path: str) -> str:
        return path[len(S3_SCHEME):] if path.startswith(S3_SCHEME) else path

    def _url(self, key: str) -> str:
        return S3_SCHEME + key

    def rel(self, path) -> str:
        key = self._key(str(path))
        return key[len(self.root) + 1:] if key.startswith(self.root + "/") else key

    def _dir_key(self, table: str, partition: dict[str, str] | None) -> str:
        return f"{self.root}/" + partition_dir(PurePosixPath("tables", table), partition).as_posix()

    def table_path(self, table: str, partition: dict[str, str] | None = None) -> str:
        """The data file the partition's manifest names now (an s3:// URL); FileNotFoundError if none."""
        files = self.files(table, partition)
        if not files:
            raise FileNotFoundError(f"{table} {partition or ''} has no published data in {self.url}")
        return files[0]

    @contextmanager
    def _store(self, action: str, key: str) -> Iterator[None]:
        """Credentials refused, bucket missing, server unreachable: one ObjectStoreError naming the home."""
        try:
            yield
        except (PermissionError, ConnectionError) as exc:
            raise ObjectStoreError(f"cannot {action} {self._url(key)}: {_first_line(exc)}; {_advice()}") from exc
        except OSError as exc:
            text = str(exc)
            if any(s in text for s in ("NoSuchBucket", "specified bucket does not exist", "Could not connect",
                                       "Cannot connect", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
                raise ObjectStoreError(f"cannot {action} {self._url(key)}: {_first_line(exc)}; {_advice()}") from exc
            raise
        except Exception as exc:
            if type(exc).__name__ in _BOTOCORE_ACCESS_ERRORS:
                raise ObjectStoreError(f"cannot {action} {self._url(key)}: {_first_line(exc)}; {_advice()}") from exc
            raise

    # -- writing -----------------------------------------------------------------
    def _upload(self, key: str, df: pl.DataFrame) -> HashingWriter:
        """Stream `df` as Parquet to `key`, hashing the bytes; a failure uploads nothing under it."""
        with self._store("write", key):
            f = self.fs.open(key, "wb")
            out = HashingWriter(f)
            try:
                df.write_parquet(out, compression="zstd", statistics=True)
            except BaseException:
                f.discard()  # aborts the multipart upload: nothing of this write appears
                f.closed = True  # and the file must not upload its buffer when collected
                raise
            f.close()
        return out

    def _commit(self, table: str, partition: dict[str, str] | None, df: pl.DataFrame) -> tuple[str, str]:
        folder = self._dir_key(table, partition)
        now = datetime.now(UTC)
        write_id = f"{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
        data_key = f"{folder}/{DATA_DIR}/{write_id}.parquet"
        out = self._upload(data_key, df)
        manifest = {
            "format": MANIFEST_FORMAT, "table": table, "partition": partition or {},
            "file": f"{DATA_DIR}/{write_id}.parquet", "rows": df.height, "bytes": out.size,
            "data_version": out.version, "written_at": now.isoformat(),
        }
        with self._store("publish", f"{folder}/{MANIFEST}"):
            self.fs.pipe_file(f"{folder}/{MANIFEST}", json.dumps(manifest, sort_keys=True).encode())
        self._collect(folder, keep=data_key, now=now)
        return self._url(data_key), out.version

    def _collect(self, folder: str, keep: str, now: datetime) -> None:
        """Delete the partition's data files that no manifest names and that are older than GRACE_S."""
        try:
            listing = self.fs.find(f"{folder}/{DATA_DIR}/", detail=True)
        except OSError:
            return
        cutoff = now - timedelta(seconds=GRACE_S)
        old = [k for k, info in listing.items() if k != keep and _modified(info) < cutoff]
        if old:
            try:
                self.fs.rm(old)
            except OSError as exc:  # another writer's collection got there first, or no delete permission
                logger.info("could not delete superseded data files under %s: %s", folder, exc)

    def _put(self, table: str, name: str, df: pl.DataFrame) -> str:
        key = f"{self.root}/tables/{table}/{name}"
        self._upload(key, df)
        return self._url(key)

    def ensure_view(self, table: str) -> None:
        """Nothing: the local catalog is brought up to date from the manifests by `connect`."""

    # -- reading -----------------------------------------------------------------
    def _listing(self, prefix: str) -> dict[str, dict]:
        with self._store("list", prefix):
            return self.fs.find(prefix.rstrip("/") + "/", detail=True)

    def _manifest(self, key: str, etag: str) -> dict:
        cached = self._manifests.get(key)
        if cached is None or cached[0] != etag:
            with self._store("read", key):
                cached = (etag, json.loads(self.fs.cat_file(key)))
            self._manifests[key] = cached
        return cached[1]

    def _published(self, listing: dict[str, dict]) -> list[tuple[str, str]]:
        """(data key, data version) of every file a listing publishes: the files its manifests name,
        and the objects of append-only tables (versioned by ETag)."""
        out = []
        for key, info in listing.items():
            name = key.rsplit("/", 1)[-1]
            if name == MANIFEST:
                m = self._manifest(key, info.get("ETag", ""))
                out.append((f"{key.rsplit('/', 1)[0]}/{m['file']}", str(m["data_version"])))
            elif name.endswith(".parquet") and f"/{DATA_DIR}/" not in key and not name.startswith("."):
                out.append((key, str(info.get("ETag", "")).strip('"')))
        return sorted(out)

    def files(self, table: str, partition: dict[str, str] | None = None) -> list[str]:
        if table.startswith("."):
            return []
        return [self._url(k) for k, _ in self._published(self._listing(self._dir_key(table, partition)))]

    def version(self, table: str, partition: dict[str, str] | None = None) -> str:
        return _combine_versions([v for _, v in self._published(self._listing(self._dir_key(table, partition)))])

    def _read(self, path, columns: list[str] | None = None) -> pl.DataFrame:
        key = self._key(str(path))
        with self._store("read", key):
            data = self.fs.cat_file(key)
        return pl.read_parquet(io.BytesIO(data), columns=columns)

    def _read_error(self, path, whole: bool) -> BaseException | None:
        try:
            if whole:
                self._read(path)
            else:
                pl.read_parquet_schema(io.BytesIO(self.fs.cat_file(self._key(str(path)))))
        except _UNREADABLE as exc:
            return exc if _is_corruption(exc) and not isinstance(exc, FileNotFoundError) else None
        return None

    def tables(self) -> list[str]:
        return sorted(self._by_table(self._listing(f"{self.root}/tables")))

    def _by_table(self, listing: dict[str, dict]) -> dict[str, dict[str, dict]]:
        start = len(self.root) + len("/tables/")
        grouped: dict[str, dict[str, dict]] = {}
        for key, info in listing.items():
            table = key[start:].split("/", 1)[0]
            if not table.startswith(".") and "/" in key[start:]:
                grouped.setdefault(table, {})[key] = info
        return {t: items for t, items in grouped.items() if self._published(items)}

    # -- damage ------------------------------------------------------------------
    def _set_aside(self, path, cause: BaseException) -> None:
        key = self._key(str(path))
        rel = self.rel(path)
        target = f"{self.root}/tables/{CORRUPT_DIR}/{rel.removeprefix('tables/')}"
        try:
            self.fs.mv(key, target)
            note = f"unreadable {rel} set aside to {self.rel(target)}"
        except OSError as exc:
            if not self.fs.exists(key):
                return
            note = f"unreadable {rel} skipped (cannot move it aside: {_first_line(exc)})"
        note += f" ({_first_line(cause)}); the rows of that one write are missing from {rel.split('/')[1]}"
        logger.warning(note)
        self.problems.append(note)

    def set_aside_files(self) -> list[str]:
        try:
            return sorted(self._url(k) for k in self.fs.find(f"{self.root}/tables/{CORRUPT_DIR}/"))
        except OSError:
            return []

    # -- catalog -----------------------------------------------------------------
    def _prepare(self, con) -> None:
        con.register_filesystem(self.fs)

    def _allowed_directories(self) -> list[str]:
        return [f"{self.tables_dir}/"]

    def _view_sql(self, table: str) -> str:
        if table in APPEND_ONLY:  # whole objects only: a glob sees new ones at once
            source = _sql_str(f"{self.tables_dir}/{table}/*.parquet")
        else:
            source = "[" + ", ".join(_sql_str(f) for f in self.files(table)) + "]"
        return (f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM '
                f"read_parquet({source}, union_by_name = true, hive_partitioning = false)")

    def _signatures(self, tables: list[str]) -> dict[str, str]:
        grouped = self._by_table(self._listing(f"{self.root}/tables"))
        return {t: _signature(t, grouped.get(t, {})) for t in tables}

    def sync_catalog(self) -> list[str]:
        """Rebuild the local views whose manifests changed since they were built; drop the views of
        tables that are gone. One LIST of the tables; returns the tables whose views were rebuilt."""
        if not self._catalog_current():
            return self.refresh_catalog()
        grouped = self._by_table(self._listing(f"{self.root}/tables"))
        views = self.home / ".views"
        changed = []
        for table, items in grouped.items():
            marker = views / table
            if not marker.exists() or marker.read_text() != _signature(table, items):
                changed.append(table)
        gone = [p.name for p in views.iterdir() if not p.name.startswith(".") and p.name not in grouped]
        if gone:
            return self.refresh_catalog()
        return self.refresh_catalog(changed) if changed else []


def _signature(table: str, items: dict[str, dict]) -> str:
    """What a table's view depends on: its manifests' ETags (append-only tables: a glob, so nothing)."""
    if table in APPEND_ONLY:
        return "glob"
    h = hashlib.blake2b(digest_size=12)
    for key in sorted(items):
        if key.endswith("/" + MANIFEST) or (key.endswith(".parquet") and f"/{DATA_DIR}/" not in key):
            h.update(f"{key}\0{items[key].get('ETag', '')}\n".encode())
    return h.hexdigest()


def _modified(info: dict) -> datetime:
    value = info.get("LastModified")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.now(UTC)  # unknown: treat as fresh, never delete

