"""What `factory demo` prints at the end: the step-by-step table and where everything is."""

from __future__ import annotations

from pathlib import Path

from factory.routing import strategy_comparison
from warehouse.status import markdown_table, table_status
from warehouse.store import Warehouse


def demo_summary(home: Path) -> str:
    wh = Warehouse(home)
    lines = [table_status(wh), ""]
    if wh.has("selections"):
        lines += ["Routing strategies: mean Arbiter reward on the prompts every strategy selected (n_shared):",
                  markdown_table(strategy_comparison(wh.read_table("selections"))), ""]
    step = home / "reports" / "step_by_step.md"
    if step.exists():
        lines += ["Win rate against the single-teacher SFT baseline after each stage (macro over languages, 95% CI):",
                  step.read_text(), ""]
    lines += [
        "Where things are:",
        f"  tables      {home / 'tables'}   (catalog: {home / 'warehouse.duckdb'})",
        f"  charts      {home / 'reports'}/step_by_step.png, win_rates_by_language.png, routing.png",
        f"  datasets    {home / 'published'}/preference_pairs, sft_data  (datasets.load_dataset(folder): every row; name=CONFIG: one language or online round)",
        f"  models      {home / 'models'}",
        "Next:",
        "  factory sql \"select code, count(*) from quarantine group by 1\"",
        "  factory lineage <pair_id>          # e.g. from: factory sql \"select pair_id from preference_pairs limit 1\"",
        f"  factory ui --home {home}           # the asset graph, checks and metadata in the Dagster UI",
    ]
    return "\n".join(lines)
