"""Evaluation charts as PNG files (matplotlib, Agg backend, imported lazily).

step_chart: the headline picture, overall (macro) win rate against one fixed
baseline after each stage, with 95% CI error bars, n per stage and the 50% line.
language_chart: per language, each stage's win rate with its CI as error bars, n in
the language labels (a language judged on one prompt shows as n=1, not as a
confident 0 or 100).
Both titles name the baseline and the tie rule (a tie counts half a win).
routing_chart: per language, the share of arbitrage wins per teacher.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

TIE_RULE = "ties count half"
SMALL_N = 10  # below this many judged prompts a language's marker is drawn hollow


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


def _with_n(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows with `n`, the number of judged prompts: the `n` column, else wins + ties + losses."""
    if "n" in rows.columns:
        return rows
    if not {"wins", "ties", "losses"} <= set(rows.columns):
        raise ValueError("win rates need an `n` column or wins, ties and losses to show n")
    return rows.with_columns(n=pl.col("wins") + pl.col("ties") + pl.col("losses"))


def _n_label(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"n={lo}" if lo == hi else f"n={lo}-{hi}"


def _ordered_stages(present: list[str], stage_order: list[str] | tuple[str, ...]) -> list[str]:
    return [s for s in stage_order if s in present] + sorted(s for s in set(present) - set(stage_order))


def step_chart(
    win_rates: pl.DataFrame, stage_order: list[str] | tuple[str, ...], baseline_name: str, out_png: str | Path
) -> Path:
    """Overall win rate vs `baseline_name` after each stage (language "all" rows), with CI bars.

    Reads WIN_RATES columns stage, baseline, language, win_rate, ci_low, ci_high and `n` (or
    wins, ties, losses). Each bar is labelled with its rate and CI; each stage's tick with its n
    and, when the table has per-language rows, how many languages the macro average is over.
    Stages missing from the table are left out; stages not in `stage_order` go last.
    """
    rows = win_rates.filter((pl.col("language") == "all") & (pl.col("baseline") == baseline_name))
    if rows.is_empty():
        raise ValueError(f"no overall (language='all') win rates against baseline {baseline_name!r}")
    rows = _with_n(rows)
    per_language = win_rates.filter((pl.col("language") != "all") & (pl.col("baseline") == baseline_name))
    n_languages = dict(per_language.group_by("stage").agg(pl.col("language").n_unique()).rows())
    stages = _ordered_stages(rows["stage"].unique().to_list(), stage_order)
    by_stage = {r["stage"]: r for r in rows.unique("stage", keep="last").to_dicts()}
    y = [100 * by_stage[s]["win_rate"] for s in stages]
    lo = [100 * (by_stage[s]["win_rate"] - by_stage[s]["ci_low"]) for s in stages]
    hi = [100 * (by_stage[s]["ci_high"] - by_stage[s]["win_rate"]) for s in stages]
    labels = [f"{s}\nn={by_stage[s]['n']}" + (f", {n_languages[s]} langs" if s in n_languages else "") for s in stages]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(stages)), 4.5))
    x = list(range(len(stages)))
    ax.bar(x, y, color="#4C72B0", alpha=0.85)
    ax.errorbar(x, y, yerr=[lo, hi], fmt="o", color="black", capsize=5, label="95% CI")
    ax.axhline(50, color="#C44E52", linestyle="--", linewidth=1, label="50% (parity)")
    if "mdd" in rows.columns and rows["mdd"].drop_nulls().len():
        mdd = 100 * float(rows["mdd"].drop_nulls().max())
        ax.axhspan(50 - mdd, 50 + mdd, color="#C44E52", alpha=0.08,
                   label=f"parity +/- {mdd:.1f} (mdd: the CI half-width)")
    for xi, s in zip(x, stages, strict=True):
        r = by_stage[s]
        text = f"{100 * r['win_rate']:.1f}\n[{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}]"
        ax.annotate(text, (xi, 100 * r["ci_high"]), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 25))
    ax.set_ylabel(f"win rate vs {baseline_name} (%)")
    ax.set_title(
        f"Win rate against {baseline_name} after each stage\n(macro average over languages; {TIE_RULE}; 95% CI)",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_png)


def language_chart(
    win_rates: pl.DataFrame,
    stage_order: list[str] | tuple[str, ...],
    out_png: str | Path,
    baseline_name: str | None = None,
) -> Path:
    """Per-language win rates: one row per language, each stage a marker with its CI as an error bar.

    Reads WIN_RATES columns stage, baseline, language, win_rate, ci_low, ci_high and `n` (or wins,
    ties, losses). Language labels carry n (a range when stages judged different counts);
    languages judged on fewer than SMALL_N prompts get hollow markers. With several baselines in
    the table, pass `baseline_name`; otherwise the only one is used (and named in the title).
    """
    rows = win_rates.filter(pl.col("language") != "all")
    baselines = rows["baseline"].unique().to_list()
    if baseline_name is None and len(baselines) > 1:
        raise ValueError(f"several baselines {sorted(baselines)}: pass baseline_name")
    if baseline_name is not None:
        rows = rows.filter(pl.col("baseline") == baseline_name)
    if rows.is_empty():
        raise ValueError("no per-language win rates to chart")
    baseline = baseline_name or baselines[0]
    rows = _with_n(rows)
    stages = _ordered_stages(rows["stage"].unique().to_list(), stage_order)
    languages = sorted(rows["language"].unique().to_list(), reverse=True)  # top to bottom: a..z
    ns = {lang: g["n"].to_list() for (lang,), g in rows.group_by("language")}
    labels = [f"{lang} ({_n_label(ns[lang])})" for lang in languages]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.12 * len(stages) * len(languages) + 1.8)))
    colors = plt.get_cmap("tab10")
    step = 0.8 / max(1, len(stages))
    for k, stage in enumerate(stages):
        mine = {
            r["language"]: r for r in rows.filter(pl.col("stage") == stage).unique("language", keep="last").to_dicts()
        }
        for i, lang in enumerate(languages):
            r = mine.get(lang)
            if r is None:
                continue
            yk = i + 0.4 - step * (k + 0.5)  # first stage on top within the language's row
            rate, low, high = (100 * r[c] for c in ("win_rate", "ci_low", "ci_high"))
            color = colors(k % 10)
            ax.errorbar(
                rate,
                yk,
                xerr=[[rate - low], [high - rate]],
                fmt="o",
                color=color,
                capsize=2,
                markersize=4,
                markerfacecolor=color if r["n"] >= SMALL_N else "white",
            )
    ax.axvline(50, color="#C44E52", linestyle="--", linewidth=1)
    for i in range(1, len(languages)):
        ax.axhline(i - 0.5, color="#dddddd", linewidth=0.5)
    ax.set_yticks(range(len(languages)), labels, fontsize=8)
    ax.set_ylim(-0.5, len(languages) - 0.5)
    ax.set_xlim(-2, 102)
    ax.set_xlabel(f"win rate vs {baseline} (%)")
    ax.set_title(
        f"Win rate against {baseline} per language\n({TIE_RULE}; 95% CI; hollow: n < {SMALL_N} prompts, few verdicts)",
        fontsize=10,
    )
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", color=colors(k % 10), markersize=4) for k in range(len(stages))]
    ax.legend(handles, stages, title="stage", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
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


def head_to_head_chart(win_rates: pl.DataFrame, out_png: str | Path) -> Path:
    """Overall win rate of each direct comparison ("stage vs opponent", language "all" rows), with its
    95% CI and, as a band around 50%, its own mdd (the interval's half-width).

    Reads WIN_RATES columns stage, opponent, language, win_rate, ci_low, ci_high, mdd and `n` (or
    wins, ties, losses). One bar per (stage, opponent), in the table's order.
    """
    rows = win_rates.filter(pl.col("language") == "all")
    if rows.is_empty() or "opponent" not in rows.columns:
        raise ValueError("no overall (language='all') head-to-head win rates with an `opponent` column")
    rows = _with_n(rows).unique(["stage", "opponent"], keep="last", maintain_order=True).to_dicts()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(rows)), 4.5))
    for i, r in enumerate(rows):
        rate, low, high = (100 * r[c] for c in ("win_rate", "ci_low", "ci_high"))
        ax.bar(i, rate, color="#55A868", alpha=0.85)
        ax.errorbar(i, rate, yerr=[[rate - low], [high - rate]], fmt="o", color="black", capsize=5)
        mdd = 100 * (r.get("mdd") or 0.0)
        ax.fill_between([i - 0.45, i + 0.45], 50 - mdd, 50 + mdd, color="#C44E52", alpha=0.12, linewidth=0)
        ax.annotate(f"{rate:.1f}\n[{low:.0f}, {high:.0f}]\nmdd {mdd:.1f}", (i, high), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=7)
    ax.axhline(50, color="#C44E52", linestyle="--", linewidth=1, label="50% (parity); shaded: +/- mdd")
    labels = [f"{r['stage']}\nvs {r['opponent']}\nn={r['n']}" for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 25))
    ax.set_ylabel("win rate of stage vs opponent (%)")
    ax.set_title(f"Head to head: each stage against the model it should improve on\n"
                 f"(macro average over the compared languages; {TIE_RULE}; 95% CI)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_png)
