"""What `factory demo` prints at the end: the step-by-step table and where everything is."""

from __future__ import annotations

from pathlib import Path


def demo_summary(home: Path) -> str:
    from warehouse.status import table_status

    lines = [table_status(), ""]
    step = home / "reports" / "step_by_step.md"
    if step.exists():
        lines += ["Win rate against the single-teacher SFT baseline after each stage (macro over languages, 95% CI):",
                  step.read_text(), ""]
    lines += [
        "Where things are:",
        f"  tables      {home / 'tables'}   (catalog: {home / 'warehouse.duckdb'})",
        f"  charts      {home / 'reports'}/step_by_step.png, win_rates_by_language.png, routing.png",
        f"  datasets    {home / 'published'}/preference_pairs, sft_data  (datasets.load_dataset(folder, name=LANG))",
        f"  models      {home / 'models'}",
        "Next:",
        "  factory sql \"select strategy, avg(reward) from selections group by 1\"",
        "  factory lineage <pair_id>          # e.g. from: factory sql \"select pair_id from preference_pairs limit 1\"",
        f"  duckdb -readonly {home / 'warehouse.duckdb'}",
        f"  DAGSTER_HOME={home / '.dagster'} FACTORY_HOME={home} .venv/bin/dagster dev -m assets   # the asset graph UI",
    ]
    return "\n".join(lines)
