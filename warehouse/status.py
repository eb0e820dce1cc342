"""`factory status`: rows, languages and the last run of every table."""

from __future__ import annotations

import polars as pl

from warehouse.store import Warehouse


def status_frame(wh: Warehouse | None = None) -> pl.DataFrame:
    wh = wh or Warehouse()
    lineage = wh.read_table("lineage") if wh.has("lineage") else None
    rows = []
    for table in wh.tables():
        df = wh.read_table(table)
        langs = df["language"].n_unique() if "language" in df.columns else None
        last_run = last_at = None
        if lineage is not None and lineage.height:
            mine = lineage.filter(pl.col("table") == table).sort("finished_at")
            if mine.height:
                last_run, last_at = mine["run_id"][-1][:8], mine["finished_at"][-1]
        rows.append({"table": table, "rows": df.height, "languages": langs, "last_run": last_run, "finished_at": last_at})
    return pl.DataFrame(rows, schema={"table": pl.String, "rows": pl.Int64, "languages": pl.Int64, "last_run": pl.String, "finished_at": pl.Datetime("us", "UTC")})


def table_status(wh: Warehouse | None = None) -> str:
    wh = wh or Warehouse()
    df = status_frame(wh)
    if df.height == 0:
        return f"warehouse {wh.home} is empty: run `factory demo` or `factory run`."
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        return f"warehouse: {wh.home}\n{df}"
