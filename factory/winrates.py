"""Win rates with bootstrap confidence intervals, and Bradley-Terry scores, from judgments.

Reads JUDGMENTS rows (prompt_id, language, judge, model, baseline, stage,
opponent, verdict win|tie|loss, score 1/0.5/0). Writes WIN_RATES rows per (stage,
opponent, model, baseline, judge, language) plus language "all", the MACRO average
over languages (each language weighs the same, whatever its prompt count), with
`opponent`, `judge`, `n` and `mdd` as extra columns. A row reads "`stage` (checkpoint
`model`) against `opponent` (checkpoint `baseline`)". Ties count as half a win.
The CI is a seeded percentile bootstrap over prompts, resampled within each
language; for "all" the per-language resamples are averaged, so the CI reflects
the macro average.

`pooled` adds one "all" row over several opponents at once (e.g. the merged model
against each cluster model on that cluster's languages: one macro average over
every language, each against its own specialist); its `baseline` lists the
opponents' checkpoint ids, comma-separated.
"""

from __future__ import annotations

import json
import zlib

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

    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0


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


def _rng(seed: int, key: tuple) -> np.random.Generator:
    # The stream depends on the group only, so adding other groups never changes a group's CI.
    return np.random.default_rng([seed, zlib.crc32(json.dumps(key, default=str).encode())])


def bootstrap_means(scores: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` means of `scores` resampled with replacement (vectorised)."""
    idx = rng.integers(0, len(scores), size=(n_boot, len(scores)))
    return scores[idx].mean(axis=1)


def _row(key: dict, language: str, verdicts: list[str], rate: float, boots: np.ndarray, alpha: float) -> dict:
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {
        **key,
        "language": language,
        "wins": verdicts.count("win"),
        "ties": verdicts.count("tie"),
        "losses": verdicts.count("loss"),
        "win_rate": float(rate),
        "ci_low": float(min(lo, rate)),
        "ci_high": float(max(hi, rate)),
        # Minimum detectable difference: the bootstrap interval's half-width. A win rate within mdd of
        # 0.5 cannot be told from parity at this eval size; two stages about sqrt(2)*mdd apart, barely.
        "mdd": float((hi - lo) / 2),
        "n": len(verdicts),
    }


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
    alpha = 1 - config.confidence
    rows = []
    for key_values, group in good.sort([*GROUP, "language", "prompt_id"]).group_by(list(GROUP), maintain_order=True):
        key = dict(zip(GROUP, key_values, strict=True))
        # Seeded by the pair compared, not by `opponent` (a name for it), so a group's CI is the one it
        # had before the column existed.
        rng = _rng(config.seed, tuple(key[k] for k in GROUP if k != "opponent"))
        per_lang_rates, per_lang_boots, all_verdicts = [], [], []
        for (language,), lang_rows in group.group_by("language", maintain_order=True):
            scores = lang_rows["score"].to_numpy().astype(float)
            verdicts = lang_rows["verdict"].to_list()
            boots = bootstrap_means(scores, config.n_boot, rng)
            rate = scores.mean()
            rows.append(_row(key, language, verdicts, rate, boots, alpha))
            per_lang_rates.append(rate)
            per_lang_boots.append(boots)
            all_verdicts += verdicts
        macro_boots = np.mean(per_lang_boots, axis=0)
        rows.append(_row(key, "all", all_verdicts, float(np.mean(per_lang_rates)), macro_boots, alpha))
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
