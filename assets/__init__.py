"""Dagster definitions only (thin): `dagster dev -m assets` loads `defs` from here."""

from assets.definitions import defs

__all__ = ["defs"]
