"""Score every completion with every scorer, check language fidelity, standardise per language.

Reads generations (GENERATIONS columns) and prompts [prompt_id, text]; writes
scores (SCORES columns plus fidelity_penalty, selectable) and a quarantine frame
[row_key, reason, payload]. Counts reconcile per scorer:
len(generations) * len(scorers) == len(scores) + len(quarantine).
A quarantine row_key is "<completion_id>|<scorer>".
"""

from __future__ import annotations

import json
import math
from typing import Any

import polars as pl

from factory.schemas import SCORES, conform
from factory.scoring.base import RewardScorer
from factory.scoring.fidelity import FidelityConfig, apply_fidelity, detect_fidelity

QUARANTINE_COLUMNS = {"row_key": pl.String, "reason": pl.String, "payload": pl.String}
SCORE_EXTRA = {"fidelity_penalty": pl.Float64, "selectable": pl.Boolean}
Z_EPS = 1e-12  # a spread below this counts as zero variance


def _quarantine_row(row: dict[str, Any], scorer: str, reason: str, **extra: Any) -> dict[str, str]:
    payload = json.dumps({**row, "scorer": scorer, **extra}, ensure_ascii=False, default=str)
    return {"row_key": f"{row.get('completion_id')}|{scorer}", "reason": reason, "payload": payload}


def _reject_inputs(generations: pl.DataFrame, prompts: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[dict, str]]]:
    """Split off rows that cannot be scored: unknown prompt, failed generation, duplicate completion_id."""
    known = set(prompts["prompt_id"].to_list())
    seen: set[str] = set()
    keep, rejected = [], []
    for i, row in enumerate(generations.iter_rows(named=True)):
        if row["completion_id"] in seen:
            rejected.append((row, "duplicate completion_id (first occurrence kept)"))
        elif row["prompt_id"] not in known:
            rejected.append((row, f"prompt_id {row['prompt_id']} not in prompts"))
        elif row.get("finish_reason") == "error":
            rejected.append((row, "generation failed (finish_reason=error): nothing to score"))
        elif row["text"] is None:
            rejected.append((row, "completion text is null"))
        else:
            seen.add(row["completion_id"])
            keep.append(i)
    return generations[keep], rejected


def add_reward_z(scores: pl.DataFrame) -> pl.DataFrame:
    """reward_z = reward standardised within (scorer, language), population std; 0.0 for n=1 or zero spread."""
    grp = ["scorer", "language"]
    mean = pl.col("reward").mean().over(grp)
    std = pl.col("reward").std(ddof=0).over(grp)
    return scores.with_columns(
        reward_z=pl.when(pl.len().over(grp) > 1, std > Z_EPS).then((pl.col("reward") - mean) / std).otherwise(0.0)
    )


def _score_one(scorer: RewardScorer, prompts: list, texts: list[str]) -> tuple[list, list[bool]]:
    if hasattr(scorer, "score_with_info"):
        rewards, truncated = scorer.score_with_info(prompts, texts)
    else:
        rewards, truncated = scorer.score(prompts, texts), [False] * len(texts)
    if len(rewards) != len(texts) or len(truncated) != len(texts):
        raise ValueError(f"scorer {scorer.name} returned {len(rewards)} rewards for {len(texts)} completions")
    return list(rewards), list(truncated)


def score_generations(
    generations: pl.DataFrame,
    prompts: pl.DataFrame,
    scorers: list[RewardScorer],
    fidelity: FidelityConfig,
    run_id: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(scores, quarantine): one scores row per completion per scorer, or a quarantine row saying why not."""
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ValueError(f"scorer names must be unique, got {names}")
    good, rejected = _reject_inputs(generations, prompts)
    quarantine = [_quarantine_row(row, s.name, reason) for row, reason in rejected for s in scorers]

    prompt_text = dict(zip(prompts["prompt_id"].to_list(), prompts["text"].to_list(), strict=True))
    messages = [[{"role": "user", "content": prompt_text[p]}] for p in good["prompt_id"].to_list()]
    texts = good["text"].to_list()
    base = pl.concat([good, detect_fidelity(good["language"].to_list(), texts, fidelity)], how="horizontal")

    frames = []
    for scorer in scorers:
        rewards, truncated = _score_one(scorer, messages, texts)
        ok = []
        for i, (reward, row) in enumerate(zip(rewards, base.iter_rows(named=True), strict=True)):
            if reward is None:
                quarantine.append(
                    _quarantine_row(row, scorer.name, "scorer returned no score (e.g. unparseable judge answer)")
                )
            elif not math.isfinite(float(reward)):
                quarantine.append(
                    _quarantine_row(row, scorer.name, f"non-finite reward ({reward})", reward=str(reward))
                )
            else:
                ok.append(i)
        frames.append(
            base[ok].with_columns(
                scorer=pl.lit(scorer.name),
                reward=pl.Series([float(rewards[i]) for i in ok], dtype=pl.Float64),
                truncated=pl.Series([bool(truncated[i]) for i in ok], dtype=pl.Boolean),
                run_id=pl.lit(run_id),
            )
        )
    scored = pl.concat(frames) if frames else pl.DataFrame()
    if scored.height == 0:
        scores = pl.DataFrame(schema={**SCORES, **SCORE_EXTRA})
    else:
        scores = conform(add_reward_z(apply_fidelity(scored, fidelity)), SCORES).select(*SCORES, *SCORE_EXTRA)
    return scores, pl.DataFrame(quarantine, schema=QUARANTINE_COLUMNS)


def teacher_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Per scorer x language x teacher: n, mean reward, mean reward_z, language_match rate (for asset metadata)."""
    return (
        scores.group_by("scorer", "language", "teacher")
        .agg(
            n=pl.len(),
            mean_reward=pl.col("reward").mean(),
            mean_reward_z=pl.col("reward_z").mean(),
            language_match_rate=pl.col("language_match").cast(pl.Float64).mean(),
        )
        .sort("scorer", "language", "teacher")
    )
