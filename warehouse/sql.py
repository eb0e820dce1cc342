"""Read-only SQL over the warehouse, for `factory sql` and users."""

from __future__ import annotations

import re

# Statements that read. Anything else (INSERT, CREATE, COPY, ATTACH, PRAGMA, SET, ...) is refused.
_READ_ONLY = re.compile(r"^\s*(\(\s*)*(select|with|from|describe|show|summarize|explain|values|table)\b", re.I)


class WriteRefused(ValueError):
    pass


def _strip_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    return re.sub(r"--[^\n]*", " ", sql)


def ensure_read_only(query: str) -> None:
    """Raise WriteRefused unless every statement in `query` only reads.

    The catalog is also opened read-only, so this is the friendly message in front
    of DuckDB's own refusal, not the only guard.
    """
    statements = [s for s in _strip_comments(query).split(";") if s.strip()]
    if not statements:
        raise WriteRefused("empty query")
    for stmt in statements:
        if not _READ_ONLY.match(stmt) or re.search(r"\bcopy\b.*\bto\b", stmt, re.I | re.S):
            first = stmt.strip().split()[0].upper()
            raise WriteRefused(
                f"refused: {first} would change the warehouse. `factory sql` is read-only; "
                "tables are written only by materializing assets (factory run / dagster)."
            )
