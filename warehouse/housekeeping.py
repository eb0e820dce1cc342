"""Housekeeping of a FACTORY_HOME, done at the start of every run.

Two things a killed run leaves, and one thing a home must remember:

- Leftovers: temp files and folders that a killed process never renamed into place. Writers name
  them in one of three ways, and each way says when the entry is safe to remove:
  * with the writer's pid (`.merged_model.tmp-4242`, `.build.json.4242.tmp`): once that process is
    gone (or the pid now belongs to a process started after the entry was last written);
  * with a random suffix (`part.parquet.tmp-1a2b3c4d`, a publish folder `.pairs.k3j2_9ab`) or a
    fixed name (`out.tmp`, `.shard.parquet.tmp`): once untouched for `max_age_s` and open in no
    process. A live writer keeps its temp open or fresh, so neither rule removes live work.
  `.dagster/` (Dagster's own storage) is never touched; resume state (`out.work/` checkpoints,
  generation and score shards) is not temp and is kept.
- The home's config: `config.json` records the identity of the config that built the home (the
  keys that decide which rows its tables hold and what their ids mean). A later run whose config
  differs in those keys is refused (ConfigMismatch) unless forced, which records the new config.
  Which keys count is the caller's choice (assets/resources.py); this module only compares.

Pid checks assume the home's writers run on this machine (a home on a filesystem shared by
several hosts needs a per-host lock instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

TEMP_MAX_AGE_S = 3600.0
SKIP_DIRS = frozenset({".dagster"})  # Dagster's storage: its own journal and temp files
CONFIG_RECORD = "config.json"

# `.{name}.tmp-{pid}` (training/merge/run.py, training/convert.py), `{name}.{pid}.tmp` (factory/ids.py,
# factory/model_sources.py, this module)
_PID_NAMES = (re.compile(r"^\..+\.tmp-(\d+)$"), re.compile(r"^.+\.(\d+)\.tmp$"))
# `{name}.tmp-{uuid8}` (warehouse/store.py)
_RANDOM_NAME = re.compile(r"^.+\.tmp-[0-9a-f]{8,32}$")
# `.{name}.{8 hex digits}` (warehouse/publish.py): a hidden folder holding a dataset being written
_PUBLISH_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}$")
_PUBLISH_ENTRIES = frozenset({"data", "README.md"})
# `out.tmp/`, `build.json.tmp`, `.{shard}.tmp`, `chart.tmp.png`: fixed names, rewritten by their writer
_FIXED_NAME = re.compile(r"^.+\.tmp(\.[A-Za-z0-9]+)?$")


@dataclass(frozen=True)
class Leftover:
    path: Path
    reason: str
    size: int


# -- processes --------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state, start time as epoch seconds) of a Linux process, or None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        btime = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after `pid (comm) `: state is field 3, starttime field 22
    return fields[0], btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` runs on this machine. With `since` (epoch seconds: when the process
    wrote something), a process that started after that cannot have written it, so a reused pid
    counts as gone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # another user's process: alive
    info = _proc_stat(pid)
    if info is None:
        return True
    state, started = info
    if state in ("Z", "X"):  # exited, not yet reaped
        return False
    return since is None or started <= since + 2.0  # start times are exact to a tick, btime to a second


def _open_paths(root: Path) -> set[str] | None:
    """Paths under `root` that some process of this user has open or mapped; None without /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    prefix = str(root)
    found: set[str] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith(prefix):
                    found.add(target)
            with open(entry / "maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    at = line.find(prefix)
                    if at >= 0:
                        found.add(line[at:].rstrip("\n").removesuffix(" (deleted)"))
        except OSError:  # gone, or another user's process
            continue
    return found


# -- leftovers --------------------------------------------------------------------------------------


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except OSError:
                    continue
    return newest


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _temp_kind(path: Path, is_dir: bool) -> tuple[str, int | None] | None:
    """('pid', pid) or ('aged', None) for a temp name, else None."""
    name = path.name
    for pattern in _PID_NAMES:
        if m := pattern.match(name):
            return "pid", int(m.group(1))
    if _RANDOM_NAME.match(name) or _FIXED_NAME.match(name):
        return "aged", None
    if is_dir and _PUBLISH_NAME.match(name):
        try:
            entries = {p.name for p in path.iterdir()}
        except OSError:
            return None
        if entries <= _PUBLISH_ENTRIES:
            return "aged", None
    return None


def find_leftovers(home: str | os.PathLike, max_age_s: float = TEMP_MAX_AGE_S, now: float | None = None) -> list[Leftover]:
    """Temp files and folders under `home` that no live process will finish (see the module doc)."""
    root = Path(os.path.realpath(home))
    now = time.time() if now is None else now
    candidates: list[tuple[Path, str, int | None]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in list(dirnames):
            path = here / name
            if not path.is_symlink() and (kind := _temp_kind(path, is_dir=True)):
                candidates.append((path, *kind))
                dirnames.remove(name)  # its content goes with it
        for name in filenames:
            path = here / name
            if not path.is_symlink() and (kind := _temp_kind(path, is_dir=False)):
                candidates.append((path, *kind))
    found: list[Leftover] = []
    open_paths: set[str] | None = None
    checked_open = False
    for path, kind, pid in candidates:
        try:
            newest = _newest_mtime(path)
            if kind == "pid":
                if pid_alive(pid, since=path.lstat().st_mtime):
                    continue
                reason = f"process {pid} is gone"
            else:
                age = now - newest
                if age < max_age_s:
                    continue
                reason = f"untouched for {age / 3600:.1f} h"
            if not checked_open:  # scanning /proc costs a little: only when something could go
                open_paths, checked_open = _open_paths(root), True
            if open_paths is not None:
                text = str(path)
                if any(p == text or p.startswith(text + os.sep) for p in open_paths):
                    continue
            found.append(Leftover(path, reason, _size(path)))
        except OSError:  # removed meanwhile
            continue
    return found


def clean_leftovers(home: str | os.PathLike, max_age_s: float = TEMP_MAX_AGE_S) -> list[Leftover]:
    """Remove what find_leftovers finds; returns what was removed."""
    removed = []
    for item in find_leftovers(home, max_age_s):
        try:
            if item.path.is_dir() and not item.path.is_symlink():
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
        except FileNotFoundError:
            continue
        except OSError:  # not ours to remove (permissions): leave it
            continue
        removed.append(item)
    return removed


def describe_leftovers(removed: list[Leftover], home: str | os.PathLike, show: int = 3) -> str:
    """One line: how many leftovers went, their size, and the first few paths relative to `home`."""
    root = Path(os.path.realpath(home))
    names = [str(item.path.relative_to(root)) for item in removed[:show]]
    more = f" and {len(removed) - show} more" if len(removed) > show else ""
    mb = sum(item.size for item in removed) / 1e6
    plural = "s" if len(removed) != 1 else ""
    return f"removed {len(removed)} temp leftover{plural} of killed runs ({mb:.1f} MB): {', '.join(names)}{more}"


# -- the home's config ------------------------------------------------------------------------------


class ConfigMismatch(RuntimeError):
    """This run's config differs from the one that built the home in keys that decide its data."""


def fingerprint(identity: dict[str, Any]) -> str:
    payload = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=8).hexdigest()


def _leaves(value: Any, key: str) -> dict[str, Any]:
    """Dotted leaf keys of nested dicts and lists (`prompts.sources.0.max_per_language`)."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        items = enumerate(value)
    else:
        return {key: value}
    out: dict[str, Any] = {}
    for sub, child in items:
        out.update(_leaves(child, f"{key}.{sub}"))
    return out


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key (old -> new)` for every leaf that differs, over the top-level keys both records have
    (a key added to the identity later does not make older homes refuse)."""
    diffs = []
    for top in [k for k in new if k in old]:
        before, after = _leaves(old[top], top), _leaves(new[top], top)
        for key in [*before, *(k for k in after if k not in before)]:
            a, b = before.get(key, "(absent)"), after.get(key, "(absent)")
            if a != b:
                diffs.append(f"{key} ({_short(a)} -> {_short(b)})")
    return diffs


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_config_record(home: str | os.PathLike) -> dict | None:
    """The home's `config.json`, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(home) / CONFIG_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("identity"), dict) else None


def check_home_config(
    home: str | os.PathLike,
    identity: dict[str, Any],
    config: dict[str, Any],
    source: str,
    force: bool = False,
    force_hint: str = "force it",
) -> str | None:
    """Record the config at the first run into `home`; afterwards refuse (ConfigMismatch, one line
    naming the keys) a run whose `identity` differs, unless `force`, which records the new config
    and keeps the old one's fingerprint under `previous`. Returns a note when it recorded a change."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / ".config.lock"), timeout=60):
        old = read_config_record(home)
        diffs = identity_diff(old["identity"], identity) if old else []
        if old and not diffs and all(k in old["identity"] for k in identity):
            return None
        if diffs and not force:
            shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
            raise ConfigMismatch(
                f"{home} was built with config {old.get('source')!r} and this run's config ({source}) differs in "
                f"keys that decide its data: {shown}. Use that config (--config / FACTORY_CONFIG) or another "
                f"FACTORY_HOME, or {force_hint} to rebuild this home with the new config "
                f"(tables of the old one stay until rematerialized)."
            )
        record = {
            "fingerprint": fingerprint(identity),
            "source": source,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "identity": identity,
            "config": config,
            "previous": (old or {}).get("previous", []),
        }
        if diffs:
            record["previous"] = [
                *record["previous"],
                {k: old.get(k) for k in ("fingerprint", "source", "recorded_at")},
            ]
        _write_json(home / CONFIG_RECORD, record)
    return f"forced: recorded config {source} for this home (was {old.get('source')!r})" if diffs else None
