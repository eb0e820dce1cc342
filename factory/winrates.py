"""Win rates with bootstrap confidence intervals, and Bradley-Terry scores, from judgments.

Reads JUDGMENTS rows (prompt_id, language, judge, model, baseline, stage,
opponent, verdict win|tie|loss, score 1/0.5/0). Writes WIN_RATES rows per (stage,
opponent, model, baseline, judge, language) plus language "all", the MACRO average
over languages (each language weighs the same, whatever its prompt count), with
`opponent`, `judge`, `n` and `mdd` as extra columns. A row reads "`stage` (checkpoint
`model`) against `opponent` (checkpoint `baseline`)". Ties count as half a win.
The CI is a normal interval whose per-prompt variance is pooled over the group's
languages (within-language deviations, N - L degrees of freedom): for a language,
rate +- z*sqrt(s2/n); for "all", the macro rate +- z*sqrt(sum of s2/n_l)/L. Pooling
keeps a small language whose verdicts happen to agree (15 ties) from claiming
certainty, and the variance has a floor of 0.75/N (N prompts in the group: the
"rule of three" bound on how often a verdict could differ from all N seen), so a
group with no disagreement at all still gets an honest width. Until 2026-12-01 it
was a percentile bootstrap within each language, which covered the true macro rate
in 0.890 of simulated runs at the demo's language sizes instead of 0.95
(`benchmarks/winrate_coverage.py`); `mdd` is the interval's half-width.

`pooled` adds one "all" row over several opponents at once (e.g. the merged model
against each cluster model on that cluster's languages: one macro average over
every language, each against its own specialist); its `baseline` lists the
opponents' checkpoint ids, comma-separated.
"""

from __future__ import annotations

import json
from statistics import NormalDist

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from warehouse.schemas import QUARANTINE, WIN_RATES, conform

SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}
GROUP = ("stage", "opponent", "model", "baseline", "judge")
# The single-teacher baseline's name as an opponent; judgments written before `opponent` existed were all
# against it.
BASELINE_STAGE = "sft_single_teacher"


class WinRateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_boot: int = 1000  # unused since the intervals are analytic (kept so that configs setting it stay valid)
    confidence: float = 0.95
    seed: int = 0  # likewise


def validate_judgments(judgments: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split judgments into valid rows and quarantine rows (row_key, reason, payload).

    Invalid: a verdict outside win/tie/loss, a missing prompt_id or language, or a
    score that disagrees with the verdict. A missing score is filled from the verdict.
    """
    df = judgments
    if "score" not in df.columns:  # filled from the verdict below, as a null score is
        df = df.with_columns(score=pl.lit(None, pl.Float64))
    if "judge" not in df.columns:
        df = df.with_columns(judge=pl.lit(""))
    if "opponent" not in df.columns:
        df = df.with_columns(opponent=pl.lit(BASELINE_STAGE))
    df = df.with_columns(pl.col("opponent").fill_null(BASELINE_STAGE))
    df = df.with_columns(
        pl.col("verdict").replace_strict(SCORES, default=None, return_dtype=pl.Float64).alias("_expected")
    )
    reason = (
        pl.when(pl.col("_expected").is_null())
        .then(pl.format("verdict {} is not win|tie|loss", pl.col("verdict").fill_null("null")))
        .when(pl.col("prompt_id").is_null() | pl.col("language").is_null())
        .then(pl.lit("missing prompt_id or language"))
        .when(pl.col("score").is_not_null() & (pl.col("score") != pl.col("_expected")))
        .then(pl.format("score {} disagrees with verdict {}", pl.col("score"), pl.col("verdict")))
    )
    df = df.with_columns(reason.alias("_reason"))
    bad = df.filter(pl.col("_reason").is_not_null())
    good = df.filter(pl.col("_reason").is_null()).with_columns(score=pl.col("_expected")).drop("_expected", "_reason")
    key = "judgment_id" if "judgment_id" in bad.columns else "prompt_id"
    quarantine = pl.DataFrame(
        {
            "row_key": [str(k) for k in bad[key].to_list()],
            "reason": bad["_reason"].to_list(),
            "payload": [
                json.dumps(r, default=str, ensure_ascii=False) for r in bad.drop("_expected", "_reason").to_dicts()
            ],
        },
        schema={k: QUARANTINE[k] for k in ("row_key", "reason", "payload")},
    )
    return good, quarantine


def _row(key: dict, language: str, verdicts: list[str], rate: float, se: float, z: float) -> dict:
    half = z * se
    return {
        **key,
        "language": language,
        "wins": verdicts.count("win"),
        "ties": verdicts.count("tie"),
        "losses": verdicts.count("loss"),
        "win_rate": float(rate),
        "ci_low": float(max(rate - half, 0.0)),
        "ci_high": float(min(rate + half, 1.0)),
        # The interval's half-width: a win rate within mdd of 0.5 cannot be told from parity at this
        # eval size (an effect of exactly mdd is detected about half the time); two stages about
        # sqrt(2)*mdd apart, barely.
        "mdd": float(half),
        "n": len(verdicts),
    }


def pooled_variance(per_language: list[np.ndarray]) -> float:
    """The per-prompt score variance within languages, pooled (N - L degrees of freedom), with a floor
    of 0.75/N: with N prompts and no disagreement seen, a verdict could still differ about 3/N of
    the time (the rule of three), which moves a score by up to 1/2."""
    n = sum(len(x) for x in per_language)
    df = n - len(per_language)
    within = sum(float(((x - x.mean()) ** 2).sum()) for x in per_language) / df if df > 0 else 0.0
    return max(within, 0.75 / n)


def win_rates(judgments: pl.DataFrame, config: WinRateConfig | None = None, run_id: str = "",
              pooled: dict[str, list[str]] | None = None) -> pl.DataFrame:
    """WIN_RATES rows (+ opponent, judge, n, mdd) per (stage, opponent, model, baseline, judge, language)
    and language "all"; plus, for each `pooled` name -> opponents, one "all" row per (stage, model,
    judge) over the judgments against any of those opponents (opponent = the pooled name).

    Raises ValueError on invalid judgments: run `validate_judgments` first and quarantine the rest.
    """
    config = config or WinRateConfig()
    good, bad = validate_judgments(judgments)
    if bad.height:
        raise ValueError(
            f"{bad.height} invalid judgments (first: {bad['reason'][0]}); quarantine them with validate_judgments"
        )
    rows = _rate_rows(good, config)
    for name, opponents in (pooled or {}).items():
        mine = good.filter(pl.col("opponent").is_in(list(opponents)))
        if mine.is_empty():
            continue
        ids = mine.group_by("stage", "model", "judge").agg(pl.col("baseline").unique().sort().str.join(",").alias("_ids"))
        mine = mine.join(ids, on=["stage", "model", "judge"]).with_columns(
            opponent=pl.lit(name), baseline=pl.col("_ids")).drop("_ids")
        rows += [r for r in _rate_rows(mine, config) if r["language"] == "all"]
    schema = {**WIN_RATES, "opponent": pl.String, "judge": pl.String, "n": pl.Int64, "mdd": pl.Float64}
    out = pl.DataFrame([{**r, "run_id": run_id} for r in rows], schema=schema)
    return conform(out, schema)


def _rate_rows(good: pl.DataFrame, config: WinRateConfig) -> list[dict]:
    z = float(NormalDist().inv_cdf(1 - (1 - config.confidence) / 2))
    rows = []
    for key_values, group in good.sort([*GROUP, "language", "prompt_id"]).group_by(list(GROUP), maintain_order=True):
        key = dict(zip(GROUP, key_values, strict=True))
        languages = [(language, lang_rows["score"].to_numpy().astype(float), lang_rows["verdict"].to_list())
                     for (language,), lang_rows in group.group_by("language", maintain_order=True)]
        s2 = pooled_variance([scores for _, scores, _ in languages])
        for language, scores, verdicts in languages:
            rows.append(_row(key, language, verdicts, scores.mean(), (s2 / len(scores)) ** 0.5, z))
        macro = float(np.mean([scores.mean() for _, scores, _ in languages]))
        se = (sum(s2 / len(scores) for _, scores, _ in languages)) ** 0.5 / len(languages)
        rows.append(_row(key, "all", [v for _, _, verdicts in languages for v in verdicts], macro, se, z))
    return rows


def bradley_terry(
    judgments: pl.DataFrame,
    *,
    n_boot: int = 0,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-9,
    prior: float = 0.5,
) -> pl.DataFrame:
    """Bradley-Terry strengths for every model and baseline in the judgments (MM algorithm, Hunter 2004).

    Each judgment is a game between `model` and `baseline`; a tie is half a win
    for each. `prior` adds that many virtual tied games between every judged
    pair, keeping undefeated models finite. Returns model, rating (Elo scale:
    400*log10 strength, mean 1000), strength (sums to 1), and with n_boot > 0 a
    seeded bootstrap 95% interval over judgments (ci_low, ci_high).
    """
    good, bad = validate_judgments(judgments)
    if bad.height:
        raise ValueError(f"{bad.height} invalid judgments; quarantine them with validate_judgments")
    if good.is_empty():  # no games, no ratings
        return pl.DataFrame(schema={"model": pl.String, "rating": pl.Float64, "strength": pl.Float64,
                                    **({"ci_low": pl.Float64, "ci_high": pl.Float64} if n_boot > 0 else {})})
    models = sorted(set(good["model"].to_list()) | set(good["baseline"].to_list()))
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[m] for m in good["model"].to_list()], dtype=int)
    b = np.array([index[m] for m in good["baseline"].to_list()], dtype=int)
    s = good["score"].to_numpy().astype(float)

    def fit(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
        k = len(models)
        wins = np.zeros((k, k))  # wins[i, j]: i's score against j
        np.add.at(wins, (a, b), s)
        np.add.at(wins, (b, a), 1 - s)
        games = wins + wins.T
        played = games > 0
        wins += prior * played / 2
        games = wins + wins.T
        p = np.full(k, 1.0 / k)
        for _ in range(max_iter):
            denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
            new = np.where(denom > 0, wins.sum(axis=1) / np.where(denom > 0, denom, 1), p)
            new /= new.sum()
            if np.abs(new - p).max() < tol:
                p = new
                break
            p = new
        return p

    p = fit(a, b, s)

    def rating(p: np.ndarray) -> np.ndarray:
        r = 400 * np.log10(np.maximum(p, 1e-300))
        return r - r.mean() + 1000

    out = {"model": models, "rating": rating(p), "strength": p}
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        boots = np.array([rating(fit(a[i], b[i], s[i])) for i in rng.integers(0, len(s), size=(n_boot, len(s)))])
        out["ci_low"], out["ci_high"] = np.quantile(boots, 0.025, axis=0), np.quantile(boots, 0.975, axis=0)
    return pl.DataFrame(out).sort("rating", descending=True)
