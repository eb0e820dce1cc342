"""Where a home's bytes live: a local folder, or an S3 prefix with a local folder beside it.

`FACTORY_HOME` is a folder (the default, `./factory_home`) or an S3 URL, `s3://bucket/prefix`.
On S3 only the tables live there; what cannot live on object storage (trained model folders,
Dagster's run storage `.dagster`, file locks, the DuckDB catalog file, resume shards under
`staging/`, reports, published dataset folders, `config.json`) lives in a local folder:
`FACTORY_LOCAL_HOME` when set, else `~/.cache/aya-factory/homes/<endpoint>/<bucket>/<prefix>`
(`$XDG_CACHE_HOME` replaces `~/.cache`), one per URL and server.

Credentials and the server come from the standard AWS variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or `AWS_DEFAULT_REGION`, and
`AWS_ENDPOINT_URL` for S3 servers other than AWS), read by botocore through s3fs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

S3_SCHEME = "s3://"
LOCAL_HOME_ENV = "FACTORY_LOCAL_HOME"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def is_s3(home: str | os.PathLike | None) -> bool:
    return isinstance(home, str) and home.strip().lower().startswith(S3_SCHEME)


def split_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end) of `s3://bucket/prefix`; a clear error otherwise."""
    parsed = urlparse(url.strip())
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if parsed.scheme.lower() != "s3" or not _BUCKET.match(bucket) or parsed.query or parsed.fragment:
        raise ValueError(f"FACTORY_HOME {url!r} is not an S3 URL of the form s3://bucket/prefix")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"FACTORY_HOME {url!r}: the prefix may not hold empty, '.' or '..' segments")
    return bucket, prefix


def normalize_s3_url(url: str) -> str:
    bucket, prefix = split_s3_url(url)
    return f"{S3_SCHEME}{bucket}/{prefix}" if prefix else f"{S3_SCHEME}{bucket}"


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def local_home_for(url: str) -> Path:
    """The local folder of an S3 home: FACTORY_LOCAL_HOME, else a cache folder named after the
    server, bucket and prefix (so two servers with the same bucket name never share one)."""
    if explicit := os.environ.get(LOCAL_HOME_ENV):
        return Path(explicit).expanduser().resolve()
    bucket, prefix = split_s3_url(url)
    endpoint = urlparse(endpoint_url() or "https://aws").netloc or "aws"
    server = re.sub(r"[^A-Za-z0-9._-]+", "_", endpoint)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (cache / "aya-factory" / "homes" / server / bucket).joinpath(*filter(None, prefix.split("/"))).resolve()


_FILESYSTEMS: dict[tuple, Any] = {}


def s3_filesystem():
    """An s3fs filesystem configured from the AWS variables, one per process and configuration.
    Listings are never cached: another process may publish a manifest at any moment."""
    import s3fs

    endpoint = endpoint_url()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    key = (endpoint, region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"), os.getpid())
    if key not in _FILESYSTEMS:
        client: dict[str, Any] = {}
        if endpoint:
            client["endpoint_url"] = endpoint
        if region:
            client["region_name"] = region
        _FILESYSTEMS[key] = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, client_kwargs=client)
    return _FILESYSTEMS[key]


def new_digest():
    """The data-version digest: BLAKE2b, 8 bytes, as warehouse.store.file_version computes it."""
    return hashlib.blake2b(digest_size=8)


class HashingWriter(io.RawIOBase):
    """A write-only file that passes bytes on to `target` and hashes them on the way, so a table's
    data version is known when its file is written, with no second read."""

    def __init__(self, target):
        super().__init__()
        self._target = target
        self.digest = new_digest()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        self._target.write(view)
        return view.nbytes

    def flush(self) -> None:
        self._target.flush()

    @property
    def version(self) -> str:
        return self.digest.hexdigest()
