"""`factory status`: rows, languages and the last run of every table.

A damaged table does not hide the others: its row shows no counts and a `problem`, and the
text lists each problem in full (the unreadable file and the `factory run` that rewrites it),
as well as lineage files set aside because they could not be read.
"""

from __future__ import annotations

import polars as pl

from warehouse import schemas
from warehouse.home import home_option
from warehouse.store import CorruptTable, Warehouse

SCHEMA = {
    "table": pl.String, "rows": pl.Int64, "languages": pl.Int64, "last_run": pl.String,
    "finished_at": pl.Datetime("us", "UTC"), "problem": pl.String,
}


def status_frame(wh: Warehouse | None = None) -> pl.DataFrame:
    wh = wh or Warehouse()
    lineage = wh.read_table("lineage") if wh.has("lineage") else None
    rows = []
    for table in wh.tables():
        last_run = last_at = None
        if lineage is not None and lineage.height:
            mine = lineage.filter(pl.col("table") == table).sort("finished_at")
            if mine.height:
                last_run, last_at = mine["run_id"][-1][:8], mine["finished_at"][-1]
        try:
            df = wh.read_table(table)
        except CorruptTable as exc:
            rows.append({"table": table, "last_run": last_run, "finished_at": last_at, "problem": str(exc)})
            continue
        # languages: not win_rates' macro average `all`; quarantine's are its partitions, less those that are not languages
        col = "language" if "language" in df.columns else "partition" if table == "quarantine" else None
        langs = df[col].filter(df[col].is_not_null() & ~df[col].is_in([schemas.UNPARTITIONED, schemas.UNROUTED])).n_unique() if col else None
        rows.append({"table": table, "rows": df.height, "languages": langs, "last_run": last_run, "finished_at": last_at})
    return pl.DataFrame(rows, schema=SCHEMA)


def table_status(wh: Warehouse | None = None) -> str:
    wh = wh or Warehouse()
    df = status_frame(wh)
    if df.height == 0:
        home = home_option(wh.url)
        return f"warehouse {wh.url} is empty: run `factory demo{home}` or `factory run{home}`."
    problems = [*df["problem"].drop_nulls().to_list(), *wh.problems]
    for f in wh.set_aside_files():
        rel = wh.rel(f)
        if not any(rel in p for p in problems):
            problems.append(f"{rel} was set aside as unreadable; delete it once inspected")
    shown = df.with_columns(pl.when(pl.col("problem").is_not_null()).then(pl.lit("unreadable, see below")).alias("problem"))
    if not problems:
        shown = shown.drop("problem")
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        text = f"warehouse: {wh.url}\n{shown}"
    return text + "".join(f"\nproblem: {p}" for p in problems)


def markdown_table(df: pl.DataFrame) -> str:
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        cells = [(f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "\\|").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
