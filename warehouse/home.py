"""Where everything lives: FACTORY_HOME and its layout."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "factory_home"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """`home`, else $FACTORY_HOME, else ./factory_home; absolute, created if missing."""
    raw = home or os.environ.get("FACTORY_HOME") or DEFAULT_HOME
    path = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def partition_dir(root: Path, partition: dict[str, str] | None) -> Path:
    """Hive-style path segments (`language=es/...`) for a partition dict, in order."""
    path = root
    for key, value in (partition or {}).items():
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"invalid partition value {key}={value!r}")
        path = path / f"{key}={value}"
    return path
