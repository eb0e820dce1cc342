"""Read-only SQL over the warehouse, for `factory sql` and users.

Read-only is a property of the connection (`Warehouse.connect`): the catalog is
opened read-only, DuckDB may read files under the home's `tables/` and nothing
else, extensions cannot be installed or loaded, and the configuration is locked.
What is left that could still write, a `COPY ... TO` or `EXPORT` into `tables/`,
is refused here by statement type, as DuckDB's own parser reads the query (so a
`--` or `;` inside a string literal is just text).
"""

from __future__ import annotations

# Statement types that only read. PIVOT parses as MULTI (DuckDB plans it in two steps);
# anything it could create lives in the read-only connection's temporary memory.
READ_TYPES = {"SELECT", "EXPLAIN", "MULTI"}


class WriteRefused(ValueError):
    pass


def ensure_read_only(query: str, con) -> None:
    """Raise WriteRefused unless every statement in `query` only reads (parsed by `con`)."""
    statements = con.extract_statements(query)
    if not statements:
        raise WriteRefused("empty query")
    for stmt in statements:
        kind = stmt.type.name
        if kind not in READ_TYPES:
            raise WriteRefused(
                f"refused: a {kind} statement would change the warehouse or reach outside it. `factory sql` is "
                "read-only; tables are written only by materializing assets (factory run / dagster)."
            )
