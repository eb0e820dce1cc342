"""What `factory demo` prints at the end: where things are and how to look at them."""

from __future__ import annotations

from pathlib import Path


def demo_summary(home: Path) -> str:
    from warehouse.status import table_status
    from warehouse.store import Warehouse

    wh = Warehouse(home)
    lines = [table_status(wh), ""]
    lines += [
        "Next:",
        f"  factory sql \"select language, count(*) from prompts group by 1\"   (home: {home})",
        f"  duckdb -readonly {home / 'warehouse.duckdb'}",
        f"  DAGSTER_HOME={home / '.dagster'} FACTORY_HOME={home} dagster dev -m assets   # the asset graph UI",
    ]
    return "\n".join(lines)
