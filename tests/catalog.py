"""Reading a home's catalog the way any DuckDB user would: a plain read-only connection."""

from pathlib import Path

import duckdb
import polars as pl


def query(home: Path, sql: str) -> pl.DataFrame:
    con = duckdb.connect(str(Path(home) / "warehouse.duckdb"), read_only=True)
    try:
        return con.sql(sql).pl()
    finally:
        con.close()
