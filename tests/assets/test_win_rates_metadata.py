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


def test_step_table_keeps_baseline_rows_and_head_to_head_table_the_others():
    from assets.evaluation.assets import head_to_head_table, step_table

    def rows(stage, opponent, model, baseline, verdicts):
        return [{"prompt_id": f"p{i}", "language": lang, "judge": "reference", "model": model, "baseline": baseline,
                 "stage": stage, "opponent": opponent, "verdict": v, "score": SCORE[v]}
                for lang, vs in verdicts.items() for i, v in enumerate(vs)]

    data = (rows("sft_arbitrage", "sft_single_teacher", "ck_sft", "ck_b", {"fr": ["win", "tie"]})
            + rows("dpo_offline", "sft_single_teacher", "ck_dpo", "ck_b", {"fr": ["tie", "tie"]})
            + rows("dpo_offline", "sft_arbitrage", "ck_dpo", "ck_sft", {"fr": ["loss", "tie"]})
            + rows("merged", "cluster_west", "ck_m", "ck_w", {"fr": ["win"]})
            + rows("merged", "cluster_east", "ck_m", "ck_e", {"ja": ["tie"]}))
    rates = win_rates(pl.DataFrame(data), WinRateConfig(n_boot=20),
                      pooled={"cluster_specialists": ["cluster_east", "cluster_west"]})
    assert step_table(rates)["stage"].to_list() == ["sft_arbitrage", "dpo_offline"]
    heads = head_to_head_table(rates)
    assert heads.select("stage", "opponent").rows() == [
        ("dpo_offline", "sft_arbitrage"), ("merged", "cluster_specialists"), ("merged", "cluster_east"),
        ("merged", "cluster_west"),
    ]
    assert heads.row(0, named=True)["win_rate"] == 0.25 and {"ci_low", "ci_high", "mdd"} <= set(heads.columns)
