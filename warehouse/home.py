"""Where everything lives: FACTORY_HOME and its layout; write failures of the home named in one line."""

from __future__ import annotations

import errno
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from warehouse.fs import is_s3, local_home_for, normalize_s3_url

DEFAULT_HOME = "factory_home"

# errno -> (what happened, what to do). Other OSErrors are bugs or transient and keep their traceback.
WRITE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free space there or set FACTORY_HOME to a folder on a disk with room"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there or set FACTORY_HOME to a folder on a disk with room"),
    errno.EROFS: ("the file system is read-only", "set FACTORY_HOME to a writable folder"),
    errno.EACCES: ("permission denied", "make the home writable for this user or set FACTORY_HOME to a writable folder"),
    errno.EPERM: ("operation not permitted", "make the home writable for this user or set FACTORY_HOME to a writable folder"),
    errno.ENOTDIR: ("a file is where a folder should be (not a folder)", "move that file away or set FACTORY_HOME elsewhere"),
    errno.EEXIST: ("a file is where a folder should be (not a folder)", "move that file away or set FACTORY_HOME elsewhere"),
}
# Creating a folder, ENOENT too: a folder on its path cannot hold new folders (/proc/x). Elsewhere a
# missing file is a race or a bug and keeps its traceback.
CREATE_ERRORS = {
    **WRITE_ERRORS,
    errno.ENOENT: ("a folder on its path cannot hold new folders", "set FACTORY_HOME to a folder that can be created"),
}


class NoWarehouse(ValueError):
    """A command that only reads was pointed at a local home that does not exist."""


class WarehouseWriteError(RuntimeError):
    """The warehouse could not write under its home (disk full, read-only, permission, a file in the way).
    `errno` is the operating system's code; the message names the home, the path and what to do."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.errno = code


def os_errno(exc: BaseException) -> int | None:
    """The OS error code behind `exc`: an OSError's errno, else one named in the message, as polars
    ("... (os error 28)") and DuckDB ("... No space left on device") report them."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    text = str(exc)
    if m := re.search(r"os error (\d+)", text):
        return int(m.group(1))
    return next((code for code in WRITE_ERRORS if os.strerror(code) in text), None)


@contextmanager
def writing(home: Path, target: Path, action: str = "write") -> Iterator[None]:
    """Turn a disk-full, read-only, permission or file-in-the-way failure while writing `target`
    into one WarehouseWriteError naming the home and what to do."""
    known = CREATE_ERRORS if action == "create" else WRITE_ERRORS
    try:
        yield
    except Exception as exc:
        code = os_errno(exc)
        if code not in known:
            raise
        what, todo = known[code]
        target = Path(target)
        if target == home:
            where = f"warehouse {home}"
        elif target.is_relative_to(home):
            where = f"{target.relative_to(home).as_posix()} in warehouse {home}"
        else:
            where = f"{target} for warehouse {home}"
        raise WarehouseWriteError(f"cannot {action} {where}: {what} ({os.strerror(code)}); {todo}", code) from exc


def home_url(home: str | os.PathLike | None = None) -> str:
    """Where the home's tables live: `home`, else $FACTORY_HOME, else ./factory_home, as an
    absolute folder or a normalized `s3://bucket/prefix` URL."""
    raw = home or os.environ.get("FACTORY_HOME") or DEFAULT_HOME
    if is_s3(raw):
        return normalize_s3_url(str(raw))
    return str(Path(raw).expanduser().resolve())


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The home's local folder, absolute, created if missing: the home itself, or for an S3 home
    the local folder beside it (warehouse.fs: FACTORY_LOCAL_HOME or a cache folder)."""
    url = home_url(home)
    path = local_home_for(url) if is_s3(url) else Path(url)
    with writing(path, path, "create"):
        path.mkdir(parents=True, exist_ok=True)
    return path


def home_option(home: str | os.PathLike | None = None) -> str:
    """` --home H` for a command printed as a hint, so that pasted it runs against the same home: H
    is `home` or $FACTORY_HOME as home_url gives it; '' when neither is set (the default home)."""
    raw = home or os.environ.get("FACTORY_HOME")
    return f" --home {shlex.quote(home_url(raw))}" if raw else ""


def existing_home(home: str | os.PathLike | None = None) -> str:
    """The home's URL as home_url gives it, for commands that only read: a local home must be an
    existing folder (a mistyped path is an error, not a new empty home). An S3 home is taken as it
    is (checking it would reach the network)."""
    url = home_url(home)
    if not is_s3(url) and not Path(url).is_dir():
        quoted = shlex.quote(url)
        raise NoWarehouse(f"no warehouse at {url} (run `factory demo --home {quoted}` or `factory run --home {quoted}` first)")
    return url


def partition_dir(root: Path, partition: dict[str, str] | None) -> Path:
    """Hive-style path segments (`language=es/...`) for a partition dict, in order."""
    path = root
    for key, value in (partition or {}).items():
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"invalid partition value {key}={value!r}")
        path = path / f"{key}={value}"
    return path


def open_work_dir(folder: str | os.PathLike) -> Path:
    """A step's resumable work folder (generation shards, a score cache), created, with the temp
    files of a killed run removed (one writer per folder at a time)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    return folder
