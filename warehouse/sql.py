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

# DuckDB types (by id) that polars holds and writes as they are, as CSV, JSON and its table.
PLAIN_TYPES = {
    "boolean", "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
    "ubigint", "float", "double", "decimal", "varchar", "date", "time", "timestamp", "timestamp_s",
    "timestamp_ms", "timestamp_ns", "timestamp with time zone", "uuid", "enum", "null",
}
CONTAINER_TYPES = {"list", "array", "struct", "map"}
FORMATS = ("table", "csv", "json")


class QueryRefused(ValueError):
    pass


class WriteRefused(QueryRefused):
    pass


def ensure_read_only(query: str, con) -> None:
    """Raise WriteRefused unless every statement in `query` only reads (parsed by `con`), and
    QueryRefused unless it is one statement (of several, only the last one's result comes back)."""
    statements = con.extract_statements(query)
    if not statements:
        raise QueryRefused("empty query")
    for stmt in statements:
        kind = stmt.type.name
        if kind not in READ_TYPES:
            raise WriteRefused(
                f"refused: a {kind} statement would change the warehouse or reach outside it. `factory sql` is "
                "read-only; tables are written only by materializing assets (factory run / dagster)."
            )
    if len(statements) > 1:
        raise QueryRefused(f"one query at a time: this holds {len(statements)} statements, and only the last "
                           "one's result would come back; run them one by one")


def _plain(t) -> bool:
    """A type polars holds and writes: a plain one, or lists, arrays, structs and maps of them."""
    if t.id in CONTAINER_TYPES:
        return all(_plain(child) for _, child in t.children if isinstance(child, type(t)))
    return t.id in PLAIN_TYPES


def printable(rel, fmt: str):
    """`rel` with what `fmt` (table, csv or json) cannot show as text: a column of a type polars
    cannot hold or write (blob, bit, interval, union, variant, ...) cast to DuckDB's text form,
    and for csv each list, array, struct or map as JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
    columns, changed = [], False
    for i, (name, t) in enumerate(zip(rel.columns, rel.types, strict=True), start=1):
        alias = '"' + name.replace('"', '""') + '"'  # by position: a join's result repeats names
        if fmt == "csv" and t.id in CONTAINER_TYPES:
            columns.append(f"to_json(#{i})::VARCHAR AS {alias}")
        elif not _plain(t):
            columns.append(f"#{i}::VARCHAR AS {alias}")
        else:
            columns.append(f"#{i} AS {alias}")
            continue
        changed = True
    return rel.project(", ".join(columns)) if changed else rel
