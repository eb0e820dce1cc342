"""How often factory.winrates' 95% intervals cover a known win rate, on the miniature's sizes.

    .venv/bin/python benchmarks/winrate_coverage.py [--runs 300] [--tie 0.86]

Synthetic verdicts of known rate 0.5 (wins and losses equally likely, `--tie` of them ties) for 18
languages with the demo's eval sizes (2 to 16 prompts each) are scored by `win_rates` as the
assets score real ones; prints how often the macro (`all`) interval and the per-language
intervals contain 0.5, and how many per-language intervals have zero width.
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl

from factory.winrates import WinRateConfig, win_rates

SIZES = [2, 6, 7, 10, 10, 10, 10, 10, 10, 10, 10, 12, 12, 15, 15, 15, 16, 10]  # eval prompts per language in a demo home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--tie", type=float, default=0.86, help="share of ties (the demo's eval: 78-86%%)")
    ap.add_argument("--n-boot", type=int, default=400)
    a = ap.parse_args()
    side = (1 - a.tie) / 2
    rng = np.random.default_rng(123)
    covered, per_language, zero, n_lang = 0, [], 0, 0
    for run in range(a.runs):
        rows = [{"prompt_id": f"{li}_{i}", "language": f"L{li:02d}", "judge": "j", "model": "m", "baseline": "b", "stage": "s",
                 "verdict": v, "score": None}
                for li, n in enumerate(SIZES) for i, v in enumerate(rng.choice(["win", "tie", "loss"], size=n, p=(side, a.tie, side)))]
        out = win_rates(pl.DataFrame(rows, schema_overrides={"score": pl.Float64}), WinRateConfig(n_boot=a.n_boot, seed=run))
        macro = out.filter(pl.col("language") == "all").row(0, named=True)
        covered += macro["ci_low"] <= 0.5 <= macro["ci_high"]
        per = out.filter(pl.col("language") != "all")
        per_language += ((per["ci_low"] <= 0.5) & (per["ci_high"] >= 0.5)).to_list()
        zero += int((per["ci_high"] == per["ci_low"]).sum())
        n_lang += per.height
    print(f"nominal 95%, true rate 0.5, {a.tie:.0%} ties, {a.runs} runs of {len(SIZES)} languages ({sum(SIZES)} prompts):")
    print(f"  macro interval covers it in {covered}/{a.runs} = {covered / a.runs:.3f}")
    print(f"  per-language intervals cover it in {np.mean(per_language):.3f}; zero width: {zero}/{n_lang} = {zero / n_lang:.2f}")


if __name__ == "__main__":
    main()
