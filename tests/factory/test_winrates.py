from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from factory.winrates import WinRateConfig, bradley_terry, validate_judgments, win_rates
from warehouse.schemas import WIN_RATES

SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def judgments(verdicts_by_language: dict[str, list[str]], stage="sft", model="ck_m", baseline="ck_b") -> pl.DataFrame:
    rows = [
        {
            "prompt_id": f"p_{lang}_{i}",
            "language": lang,
            "judge": "reference",
            "model": model,
            "baseline": baseline,
            "stage": stage,
            "verdict": v,
            "score": SCORE[v],
        }
        for lang, verdicts in verdicts_by_language.items()
        for i, v in enumerate(verdicts)
    ]
    return pl.DataFrame(rows)


def row(df: pl.DataFrame, language: str) -> dict:
    return df.filter(pl.col("language") == language).to_dicts()[0]


Z = 1.959963984540054  # the 97.5% normal quantile


def test_all_wins_is_not_certainty():
    """Ten wins of ten: the rate is 1, but the interval keeps the rule-of-three floor on the variance
    (0.75/N), so it does not claim that a loss is impossible."""
    out = win_rates(judgments({"en": ["win"] * 10}))
    r = row(out, "en")
    assert (r["wins"], r["ties"], r["losses"]) == (10, 0, 0)
    assert r["win_rate"] == r["ci_high"] == 1.0
    assert r["ci_low"] == pytest.approx(1 - Z * (0.75 / 10 / 10) ** 0.5) and 0.8 < r["ci_low"] < 1
    assert list(out.columns[: len(WIN_RATES)]) == list(WIN_RATES)


def test_ties_count_half_and_macro_average():
    # en: 1 win, 2 ties, 1 loss -> 0.5 ; fr: 8 wins of 8 -> 1.0. Macro = 0.75, micro would be 10/12.
    out = win_rates(judgments({"en": ["win", "tie", "tie", "loss"], "fr": ["win"] * 8}), WinRateConfig(n_boot=300))
    assert row(out, "en")["win_rate"] == pytest.approx(0.5)
    assert row(out, "fr")["win_rate"] == pytest.approx(1.0)
    overall = row(out, "all")
    assert overall["win_rate"] == pytest.approx(0.75)
    assert (overall["wins"], overall["ties"], overall["losses"], overall["n"]) == (9, 2, 1, 12)
    # One variance for the group, pooled within languages (fr never varies, yet its 8 prompts are not
    # taken as certain): a language's half-width is z*sqrt(s2/n), the macro one z*sqrt(s2/4 + s2/8)/2.
    en, fr = row(out, "en"), row(out, "fr")
    assert fr["ci_low"] < 1.0
    assert en["mdd"] / fr["mdd"] == pytest.approx((8 / 4) ** 0.5)
    assert overall["mdd"] / en["mdd"] == pytest.approx((1 / 4 + 1 / 8) ** 0.5 / 2 / (1 / 4) ** 0.5)


def test_balanced_set_contains_half_and_narrows_with_more_data():
    small = win_rates(judgments({"en": ["win", "loss"] * 10}), WinRateConfig(n_boot=1000))
    big = win_rates(judgments({"en": ["win", "loss"] * 200}), WinRateConfig(n_boot=1000))
    s, b = row(small, "en"), row(big, "en")
    assert s["ci_low"] < 0.5 < s["ci_high"] and b["ci_low"] < 0.5 < b["ci_high"]
    assert (b["ci_high"] - b["ci_low"]) < 0.5 * (s["ci_high"] - s["ci_low"])
    # Normal approximation for the 20-prompt case: half-width ~ 1.96 * 0.5 / sqrt(20) ~ 0.22.
    assert (s["ci_high"] - s["ci_low"]) / 2 == pytest.approx(1.96 * 0.5 / np.sqrt(20), abs=0.05)


def test_deterministic_and_grouped_per_stage():
    data = pl.concat([judgments({"en": ["win", "loss", "tie"] * 5}, stage=s) for s in ("sft", "dpo")])
    a = win_rates(data, WinRateConfig(seed=3, n_boot=200))
    assert a.equals(win_rates(data, WinRateConfig(seed=4, n_boot=10)))  # analytic intervals: no resampling
    assert sorted(a.select("stage", "language").unique().rows()) == [
        ("dpo", "all"),
        ("dpo", "en"),
        ("sft", "all"),
        ("sft", "en"),
    ]
    # A group's CI does not depend on which other groups are in the table.
    alone = win_rates(data.filter(pl.col("stage") == "dpo"))
    assert alone.equals(a.filter(pl.col("stage") == "dpo"))


def test_invalid_judgments_are_quarantined_not_counted():
    data = judgments({"en": ["win", "loss"]}).vstack(
        pl.DataFrame(
            [
                {
                    "prompt_id": "p_x",
                    "language": "en",
                    "judge": "reference",
                    "model": "ck_m",
                    "baseline": "ck_b",
                    "stage": "sft",
                    "verdict": "maybe",
                    "score": None,
                }
            ]
        )
    )
    good, bad = validate_judgments(data)
    assert good.height == 2 and bad.height == 1
    assert "maybe" in bad["reason"][0] and bad["row_key"][0] == "p_x"
    with pytest.raises(ValueError, match="invalid judgments"):
        win_rates(data)


def test_bradley_terry_orders_models():
    strong = judgments({"en": ["win"] * 8 + ["loss"] * 2}, model="strong", baseline="base")
    weak = judgments({"en": ["win"] * 3 + ["loss"] * 7}, model="weak", baseline="base")
    bt = bradley_terry(pl.concat([strong, weak]), n_boot=50, seed=0)
    assert bt["model"].to_list() == ["strong", "base", "weak"]
    assert bt["strength"].sum() == pytest.approx(1.0)
    assert bt["rating"].mean() == pytest.approx(1000.0)
    assert (bt["ci_low"] <= bt["rating"]).all() and (bt["rating"] <= bt["ci_high"]).all()
    # Two-model case has the closed form p_strong / p_base = wins / losses (up to the small prior).
    two = bradley_terry(strong, prior=0.0)
    ratio = (
        two.filter(pl.col("model") == "strong")["strength"][0] / two.filter(pl.col("model") == "base")["strength"][0]
    )
    assert ratio == pytest.approx(8 / 2, rel=1e-4)


def test_minimum_detectable_difference_is_the_interval_half_width_and_shrinks_with_n():
    small = row(win_rates(judgments({"de": ["win", "loss", "tie"] * 10})), "all")
    large = row(win_rates(judgments({"de": ["win", "loss", "tie"] * 160})), "all")
    for r in (small, large):
        assert r["mdd"] == pytest.approx((r["ci_high"] - r["ci_low"]) / 2, abs=1e-9)
    assert 0 < large["mdd"] < small["mdd"] / 2  # 16x the judgments: about a quarter of the width
    # no spread: the width comes from the rule-of-three floor on the variance alone
    assert row(win_rates(judgments({"de": ["win"] * 20})), "all")["mdd"] == pytest.approx(Z * (0.75 / 20 / 20) ** 0.5)


def test_opponent_names_the_comparison_and_pooled_rows_span_opponents():
    base = judgments({"en": ["win", "tie"], "fr": ["loss"]}, stage="merged", model="ck_merged", baseline="ck_b")
    base = base.with_columns(opponent=pl.lit("sft_single_teacher"))
    east = judgments({"ja": ["win", "win"], "ko": ["tie"]}, stage="merged", model="ck_merged", baseline="ck_east")
    west = judgments({"de": ["loss", "tie"]}, stage="merged", model="ck_merged", baseline="ck_west")
    east, west = east.with_columns(opponent=pl.lit("cluster_east")), west.with_columns(opponent=pl.lit("cluster_west"))
    out = win_rates(pl.concat([base, east, west]), WinRateConfig(n_boot=100),
                    pooled={"cluster_specialists": ["cluster_east", "cluster_west"]})
    overall = {r["opponent"]: r for r in out.filter(pl.col("language") == "all").to_dicts()}
    assert set(overall) == {"sft_single_teacher", "cluster_east", "cluster_west", "cluster_specialists"}
    assert overall["cluster_east"]["baseline"] == "ck_east"
    pooled = overall["cluster_specialists"]
    assert pooled["baseline"] == "ck_east,ck_west" and pooled["n"] == 5
    assert pooled["win_rate"] == pytest.approx((1.0 + 0.5 + 0.25) / 3)  # macro over ja, ko, de
    assert pooled["ci_low"] <= pooled["win_rate"] <= pooled["ci_high"]
    # The pooled name adds no per-language rows (those are under each cluster).
    assert out.filter((pl.col("opponent") == "cluster_specialists") & (pl.col("language") != "all")).is_empty()


def test_opponent_column_does_not_move_existing_rows():
    plain = judgments({"en": ["win", "tie", "loss", "win"], "fr": ["tie", "win"]})
    named = plain.with_columns(opponent=pl.lit("sft_single_teacher"))
    a = win_rates(plain, WinRateConfig(n_boot=200)).drop("opponent")
    b = win_rates(named, WinRateConfig(n_boot=200)).drop("opponent")
    assert a.equals(b)  # same rates and the same bootstrap CIs
    assert set(win_rates(plain, WinRateConfig(n_boot=10))["opponent"]) == {"sft_single_teacher"}  # the baseline's name


def test_no_judgments_give_no_ratings_and_a_missing_score_column_is_filled():
    rows = judgments({"en": ["win", "tie"]})
    none = rows.head(0)
    assert bradley_terry(none).is_empty() and bradley_terry(none, n_boot=10).columns == ["model", "rating", "strength", "ci_low", "ci_high"]
    good, bad = validate_judgments(rows.drop("score"))  # a judgments frame without the column: scores from the verdicts
    assert bad.is_empty() and good["score"].to_list() == [1.0, 0.5]
