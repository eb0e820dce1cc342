"""The win_rates asset's per-language metadata: a table with n and the CI, one row per (language, stage)."""

from __future__ import annotations

import dagster as dg
import polars as pl

from assets.evaluation.assets import language_table
from assets.io_manager import metadata_table
from factory.winrates import WinRateConfig, win_rates

SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def test_per_language_win_rates_are_one_table_row_per_language_and_stage():
    verdicts = {"fr": ["win", "tie", "loss"], "ja": ["win"]}
    rows = [
        {"prompt_id": f"p_{lang}_{i}", "language": lang, "judge": "reference", "model": f"ck_{stage}",
         "baseline": "ck_b", "stage": stage, "verdict": v, "score": SCORE[v]}
        for stage in ("merged", "sft_arbitrage")  # out of pipeline order on purpose
        for lang, vs in verdicts.items()
        for i, v in enumerate(vs)
    ]
    rates = win_rates(pl.DataFrame(rows), WinRateConfig(n_boot=50))
    table = language_table(rates)
    assert table.select("language", "stage", "n").rows() == [
        ("fr", "sft_arbitrage", 3), ("fr", "merged", 3), ("ja", "sft_arbitrage", 1), ("ja", "merged", 1),
    ]
    assert table.filter(pl.col("language") == "fr")["win_rate"].to_list() == [0.5, 0.5]
    value = metadata_table(table)
    assert isinstance(value, dg.TableMetadataValue)
    first = value.records[0].data
    assert first["language"] == "fr" and first["n"] == 3 and first["ci_low"] <= 0.5 <= first["ci_high"]
