"""One round of online iterative DPO's data: sample k completions per training prompt from the
current policy, rank them with the Arbiter, pair best vs worst (method `online`, round k).

Also measures the policy on held-out (eval) prompts: mean reward, mean length and
language-match rate, so reward hacking (length or language drift) is visible round by round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from pydantic import Field

from factory.generation.base import SamplingConfig
from factory.generation.registry import TeacherConfig, make_backend
from factory.generation.runner import generate_completions
from factory.pairs import best_worst
from factory.scoring.fidelity import FidelityConfig
from factory.scoring.score import score_generations
from factory.settings import Strict
from training.dpo import DPOStageConfig


@dataclass
class OnlineRound:
    generations: pl.DataFrame
    scores: pl.DataFrame
    pairs: pl.DataFrame
    quarantine: pl.DataFrame
    pair_stats: dict
    heldout: dict


def policy_teacher(name: str, path: str | Path, sampling: SamplingConfig, batch_size: int) -> tuple[TeacherConfig, object]:
    cfg = TeacherConfig(name=name, model=str(path), sampling=sampling, batch_size=batch_size)
    return cfg, make_backend(cfg)


def heldout_metrics(scores: pl.DataFrame, generations: pl.DataFrame) -> dict:
    """Mean reward, mean length (tokens) and language-match rate, overall and per language."""
    joined = scores.join(generations.select("completion_id", "n_tokens"), on="completion_id")
    if not joined.height:
        return {"n": 0}
    per_lang = joined.group_by("language").agg(
        mean_reward=pl.col("reward").mean(), mean_tokens=pl.col("n_tokens").mean(),
        language_match=pl.col("language_match").cast(pl.Float64).mean(),
    ).sort("language")
    return {
        "n": joined.height,
        "mean_reward": float(joined["reward"].mean()),
        "mean_tokens": float(joined["n_tokens"].mean()),
        "language_match_rate": float(joined["language_match"].cast(pl.Float64).mean()),
        "per_language": per_lang.to_dicts(),
    }


def online_round(
    round: int,
    policy_name: str,
    policy_path: str | Path,
    prompts: pl.DataFrame,
    scorer,
    fidelity: FidelityConfig,
    k: int,
    sampling: SamplingConfig,
    shard_dir: Path,
    run_id: str,
    batch_size: int = 32,
    min_margin: float = 0.0,
) -> OnlineRound:
    """Generate, score and pair for round `round`; `policy_name` goes into completion ids, so a
    different policy never reuses another's resumable shards."""
    teacher = policy_teacher(policy_name, policy_path, sampling, batch_size)
    train = prompts.filter(pl.col("split") == "train")
    gens, q_gen = generate_completions(train, [teacher], k, Path(shard_dir) / "train", run_id)
    scores, q_score = score_generations(gens, prompts, [scorer], fidelity, run_id)
    scored = scores.join(gens.select("completion_id", "sample_index", "text"), on="completion_id")
    pairs, stats = best_worst(scored, prompts, min_margin, method="online", round=round, run_id=run_id)

    greedy = SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=sampling.max_new_tokens, seed=sampling.seed)
    eval_teacher = policy_teacher(policy_name, policy_path, greedy, batch_size)
    eval_prompts = prompts.filter(pl.col("split") == "eval")
    eval_gens, q_eval = generate_completions(eval_prompts, [eval_teacher], 1, Path(shard_dir) / "eval", run_id)
    eval_scores, q_eval_score = score_generations(eval_gens, prompts, [scorer], fidelity, run_id)
    quarantine = pl.concat([q_gen, q_score, q_eval, q_eval_score], how="diagonal_relaxed")
    return OnlineRound(gens, scores, pairs, quarantine, stats, heldout_metrics(eval_scores, eval_gens))


class OnlineConfig(Strict):
    """Online iterative DPO: 3 rounds, as in Aya Expanse (beyond 3 gave little and risked reward hacking)."""

    k: int = Field(4, ge=2)  # samples per prompt from the current policy
    betas: list[float] = Field(default_factory=lambda: [0.1, 0.1, 0.1], min_length=3, max_length=3)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.95))
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    batch_size: int = 32
