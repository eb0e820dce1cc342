"""The code version recorded in lineage: package version plus a hash of the source."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

__version__ = "0.1.0"
_PACKAGES = ("factory", "training", "warehouse", "assets")


@lru_cache(maxsize=1)
def code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.blake2b(digest_size=4)
    for pkg in _PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return f"{__version__}+{h.hexdigest()}"
