"""What `factory demo` prints at the end: the step-by-step table and where everything is."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from factory.machine import describe_machine
from factory.routing import strategy_comparison
from warehouse.home import home_option
from warehouse.status import markdown_table, table_status
from warehouse.store import Warehouse


def step_rows(wh: Warehouse, since: datetime | None = None, side_outputs: frozenset[str] = frozenset()) -> pl.DataFrame:
    """The lineage rows of steps (with a start time) finished since `since`, side outputs left out
    (their step is counted once, under its main asset). Empty without a lineage table."""
    if not wh.has("lineage"):
        return pl.DataFrame()
    rows = wh.read_table("lineage").filter(pl.col("started_at").is_not_null() & ~pl.col("asset").is_in(list(side_outputs)))
    return rows if since is None else rows.filter(pl.col("finished_at") >= since)


def step_timings(wh: Warehouse, since: datetime | None = None, side_outputs: frozenset[str] = frozenset()) -> pl.DataFrame:
    """Per asset, from the lineage table: how many partitions were written (since `since`), their
    total and longest seconds (from the step's first input read to its output written), the share
    of the total, slowest first. Excludes Dagster's and the process's own start-up. `side_outputs`
    (tables a step writes beside its main output) are left out: their step is counted once, under
    its main asset."""
    rows = step_rows(wh, since, side_outputs)
    if not rows.height:
        return pl.DataFrame()
    seconds = (pl.col("finished_at") - pl.col("started_at")).dt.total_milliseconds() / 1000
    per = rows.with_columns(seconds=seconds).group_by("asset").agg(
        partitions=pl.len(), seconds=pl.col("seconds").sum(), slowest=pl.col("seconds").max(),
    )
    total = per["seconds"].sum() or 1.0
    return per.with_columns(
        share=(pl.col("seconds") / total).round(3), seconds=pl.col("seconds").round(1), slowest=pl.col("slowest").round(1),
    ).sort("seconds", descending=True)


def steps_in_flight(wh: Warehouse, since: datetime | None = None, side_outputs: frozenset[str] = frozenset()) -> dict[str, float]:
    """Seconds from the first step's start to the last step's end (lineage timestamps, since `since`)
    with no step, exactly one step, and two or more steps running (a step = the union of its lineage
    rows' intervals, so a chained partition step counts once). Long "none" is start-up and scheduling
    between steps (Dagster, process start); long "one" is the graph's serial chain, which more workers
    cannot shorten. Empty without lineage rows."""
    rows = step_rows(wh, since, side_outputs)
    if not rows.height:
        return {}
    # one interval per (run, partition): a run's chained assets are one step
    steps = rows.group_by("run_id", "partition").agg(pl.col("started_at").min(), pl.col("finished_at").max())
    events = sorted([(s.timestamp(), 1) for s in steps["started_at"]] + [(e.timestamp(), -1) for e in steps["finished_at"]])
    spent = {"none": 0.0, "one": 0.0, "two_or_more": 0.0}
    running, last = 0, events[0][0]
    for t, change in events:
        spent["none" if running == 0 else "one" if running == 1 else "two_or_more"] += t - last
        running, last = running + change, t
    return {k: round(v, 1) for k, v in spent.items()}


def demo_summary(
    home: Path, since: datetime | None = None, wall_s: float | None = None, tables: str | None = None,
    side_outputs: frozenset[str] = frozenset(), config_option: str = "",
) -> str:
    """`home` is the local folder (models, reports, published datasets); `tables` where the tables
    are when that is elsewhere (an s3:// home). The printed commands name the home, and the run's
    config where they take one (`config_option`, ` -c C` for a config other than the default)."""
    wh = Warehouse(tables or home)
    lines = [table_status(wh), ""]
    if wh.has("selections"):
        lines += ["Routing strategies: mean Arbiter reward on the prompts every strategy selected (n_shared):",
                  markdown_table(strategy_comparison(wh.read_table("selections"))), ""]
    step = home / "reports" / "step_by_step.md"
    if step.exists():
        lines += ["Win rate against the single-teacher SFT baseline after each stage (macro over languages, 95% CI):",
                  step.read_text(), ""]
    heads = home / "reports" / "head_to_head.md"
    if heads.exists():
        lines += ["Head to head: each stage against the model it should improve on (offline DPO vs arbitrage SFT; "
                  "merged vs the cluster models, each on its own languages; mdd = the 95% interval's half-width: a smaller difference from 0.5 cannot be told from parity):",
                  heads.read_text(), ""]
    timings = step_timings(wh, since, side_outputs)
    if timings.height:
        inside = float(timings["seconds"].sum())
        wall = (f"; the run took {wall_s:.0f}s wall: the difference is process and Dagster start-up, scheduling and "
                "waits, less the overlap of parallel workers") if wall_s else ""
        lines += [f"Where the time went, per asset (from the lineage table; {inside:.0f}s inside steps{wall}):",
                  markdown_table(timings)]
        flight = steps_in_flight(wh, since, side_outputs)
        if flight:
            lines += [f"Steps running, from the first step's start to the last one's end: none {flight['none']:.0f}s "
                      f"(start-up and scheduling between steps), one {flight['one']:.0f}s (the serial chain: more workers "
                      f"do not shorten it), two or more {flight['two_or_more']:.0f}s"]
        lines += ["", "This machine:", describe_machine(), ""]
    at = home_option(tables or home)
    lines += [
        "Where things are:",
        f"  tables      {tables or home / 'tables'}   (catalog: {home / 'warehouse.duckdb'})",
        f"  charts      {home / 'reports'}/step_by_step.png, head_to_head.png, win_rates_by_language.png, routing.png",
        f"  datasets    {home / 'published'}/preference_pairs, sft_data  (datasets.load_dataset(folder): every row; name=CONFIG: one language or online round)",
        f"  models      {home / 'models'}",
        "Next:",
        f"  factory sql \"select code, count(*) from quarantine group by 1\"{at}",
        f"  factory lineage <pair_id>{at}          # e.g. from: factory sql \"select pair_id from preference_pairs limit 1\"{at}",
        f"  factory ui{config_option}{at}           # the asset graph, checks and metadata in the Dagster UI",
    ]
    return "\n".join(lines)
