"""Evaluation charts as PNG files (matplotlib, Agg backend, imported lazily).

step_chart: the headline picture, overall (macro) win rate against one fixed
baseline after each stage, with bootstrap CI error bars and the 50% line.
language_chart: languages x stages heatmap of win rates.
routing_chart: per language, the share of arbitrage wins per teacher.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

DEFAULT_STAGES = ("sft_arbitrage", "dpo_offline", "dpo_online_1", "dpo_online_2", "dpo_online_3", "merged")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    tmp.replace(out)
    return out


def _ordered_stages(present: list[str], stage_order: list[str] | tuple[str, ...]) -> list[str]:
    return [s for s in stage_order if s in present] + sorted(s for s in set(present) - set(stage_order))


def step_chart(
    win_rates: pl.DataFrame, stage_order: list[str] | tuple[str, ...], baseline_name: str, out_png: str | Path
) -> Path:
    """Overall win rate vs `baseline_name` after each stage (language "all" rows), with CI bars.

    Reads WIN_RATES columns stage, baseline, language, win_rate, ci_low, ci_high.
    Stages missing from the table are left out; stages not in `stage_order` go last.
    """
    rows = win_rates.filter((pl.col("language") == "all") & (pl.col("baseline") == baseline_name))
    if rows.is_empty():
        raise ValueError(f"no overall (language='all') win rates against baseline {baseline_name!r}")
    stages = _ordered_stages(rows["stage"].unique().to_list(), stage_order)
    by_stage = {r["stage"]: r for r in rows.unique("stage", keep="last").to_dicts()}
    y = [100 * by_stage[s]["win_rate"] for s in stages]
    lo = [100 * (by_stage[s]["win_rate"] - by_stage[s]["ci_low"]) for s in stages]
    hi = [100 * (by_stage[s]["ci_high"] - by_stage[s]["win_rate"]) for s in stages]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(stages)), 4))
    x = list(range(len(stages)))
    ax.bar(x, y, color="#4C72B0", alpha=0.85)
    ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", color="black", capsize=5)
    ax.axhline(50, color="#C44E52", linestyle="--", linewidth=1, label="50% (parity)")
    for xi, yi in zip(x, y, strict=True):
        ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax.set_xticks(x, stages, rotation=20, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("win rate vs baseline (%)")
    ax.set_title(f"Win rate against {baseline_name} after each stage (macro over languages, 95% CI)")
    ax.legend(loc="lower right")
    return _save(fig, out_png)


def language_chart(
    win_rates: pl.DataFrame,
    stage_order: list[str] | tuple[str, ...],
    out_png: str | Path,
    baseline_name: str | None = None,
) -> Path:
    """Heatmap of per-language win rates (rows: languages, columns: stages); cells annotated in %.

    With several baselines in the table, pass `baseline_name`; otherwise the only one is used.
    """
    rows = win_rates.filter(pl.col("language") != "all")
    baselines = rows["baseline"].unique().to_list()
    if baseline_name is None and len(baselines) > 1:
        raise ValueError(f"several baselines {sorted(baselines)}: pass baseline_name")
    if baseline_name is not None:
        rows = rows.filter(pl.col("baseline") == baseline_name)
    if rows.is_empty():
        raise ValueError("no per-language win rates to chart")
    import numpy as np

    stages = _ordered_stages(rows["stage"].unique().to_list(), stage_order)
    languages = sorted(rows["language"].unique().to_list())
    grid = np.full((len(languages), len(stages)), np.nan)
    for r in rows.to_dicts():
        grid[languages.index(r["language"]), stages.index(r["stage"])] = 100 * r["win_rate"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(stages) + 2), max(3, 0.35 * len(languages) + 1.5)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(languages)):
        for j in range(len(stages)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right")
    ax.set_yticks(range(len(languages)), languages)
    ax.set_title("Win rate vs baseline per language (%)")
    fig.colorbar(image, ax=ax, label="win rate (%)")
    return _save(fig, out_png)


def routing_chart(routing_stats: pl.DataFrame, out_png: str | Path) -> Path:
    """Stacked bars: per language, the share of prompts each teacher won.

    Reads language, teacher and a `wins` count; without `wins`, each row counts
    as one win (so a SELECTIONS table can be passed as is).
    """
    counts = (
        routing_stats if "wins" in routing_stats.columns else routing_stats.group_by("language", "teacher").len("wins")
    )
    counts = counts.group_by("language", "teacher").agg(pl.col("wins").sum())
    if counts.is_empty():
        raise ValueError("no routing stats to chart")
    counts = counts.with_columns(share=pl.col("wins") / pl.col("wins").sum().over("language"))
    languages = sorted(counts["language"].unique().to_list())
    teachers = sorted(counts["teacher"].unique().to_list())
    share = {(r["language"], r["teacher"]): r["share"] for r in counts.to_dicts()}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(languages) + 2), 4))
    bottom = [0.0] * len(languages)
    colors = plt.get_cmap("tab10")
    for k, teacher in enumerate(teachers):
        values = [100 * share.get((lang, teacher), 0.0) for lang in languages]
        ax.bar(languages, values, bottom=bottom, label=teacher, color=colors(k % 10))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of wins (%)")
    ax.set_title("Which teacher wins the arbitrage, per language")
    ax.legend(title="teacher", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    ax.tick_params(axis="x", rotation=45)
    return _save(fig, out_png)
