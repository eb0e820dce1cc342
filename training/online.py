"""Online iterative DPO, one round at a time, decided on the dev split.

A round's data: sample k completions per training prompt from the current policy, rank them with the
Arbiter, pair them with the language guard (`factory.pairs.language_guarded_pairs`: a wrong-language
answer is never chosen, and is the rejected one when the Arbiter ranks it first).

A round's decision: each beta candidate is trained from the current policy, answers the dev prompts
(greedy) and is judged head to head against the current policy by the independent judge (never the
Arbiter, never on eval prompts). The candidate with the highest dev win rate is kept when that win rate
is at least `stop_below` (default 0.5: no worse than the policy it came from); otherwise the round
stops: the policy stays what it was, and every later round is skipped (no sampling, no training), so
the model the evaluation calls `dpo_online_round_k` is the last kept policy. Each round records its
dev figures, the drift report (Arbiter reward, length and language match on dev, for both policies) and
the decision in its checkpoint's `metrics["online"]` (see `round_record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from pydantic import Field, field_validator

from factory.evaluation import judge_against_baseline
from factory.generation.base import SamplingConfig
from factory.generation.registry import TeacherConfig, make_backend
from factory.generation.runner import generate_completions
from factory.pairs import language_guarded_pairs
from factory.scoring.fidelity import FidelityConfig
from factory.scoring.score import score_generations
from factory.settings import Strict
from factory.winrates import WinRateConfig, win_rates
from training.dpo import DPOStageConfig

CONTINUE = "continue"
STOP = "stop: dev judge fell"
NO_DEV = "continue: no dev verdicts"  # no dev prompts (or no verdicts): nothing to decide on
PREVIOUS_POLICY = "previous_policy"  # the opponent of a round's dev judgments
SKIPPED = "skipped"  # a round after a stop: "skipped: stopped at round j"
DEV_TEACHER = "online_dev"  # one name for every policy's dev answers: ids differ by the weights' hash


@dataclass
class OnlineRound:
    generations: pl.DataFrame
    scores: pl.DataFrame
    pairs: pl.DataFrame
    quarantine: pl.DataFrame
    pair_stats: dict
    heldout: dict  # the sampled policy's drift report on dev (`heldout_metrics`)


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


def dev_prompts(prompts: pl.DataFrame) -> pl.DataFrame:
    return prompts.filter(pl.col("split") == "dev")


def dev_answers(path: str | Path, prompts: pl.DataFrame, sampling: SamplingConfig, shard_dir: Path, run_id: str,
                batch_size: int = 32) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The model's answers to the dev prompts, one each. Shards are shared by every policy (one teacher
    name; completion ids carry the weights' hash), so a policy's answers are generated once per run."""
    teacher = policy_teacher(DEV_TEACHER, path, sampling, batch_size)
    return generate_completions(dev_prompts(prompts), [teacher], 1, Path(shard_dir), run_id, progress=False)


def dev_drift(answers: pl.DataFrame, prompts: pl.DataFrame, scorer, fidelity: FidelityConfig, run_id: str) -> tuple[dict, pl.DataFrame]:
    """The drift report of a policy's dev answers under the Arbiter, and the scoring quarantine."""
    scores, quarantine = score_generations(answers, prompts, [scorer], fidelity, run_id)
    return heldout_metrics(scores, answers), quarantine


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
    *,
    dev_sampling: SamplingConfig,
    dev_dir: Path,
) -> OnlineRound:
    """Generate, score and pair (language guard) for round `round`; `policy_name` goes into completion
    ids, so a different policy never reuses another's resumable shards. The policy's drift report is
    measured on the dev prompts (never on eval)."""
    teacher = policy_teacher(policy_name, policy_path, sampling, batch_size)
    train = prompts.filter(pl.col("split") == "train")
    gens, q_gen = generate_completions(train, [teacher], k, Path(shard_dir) / "train", run_id)
    scores, q_score = score_generations(gens, prompts, [scorer], fidelity, run_id)
    scored = scores.join(gens.select("completion_id", "sample_index", "text"), on="completion_id")
    pairs, stats = language_guarded_pairs(scored, prompts, min_margin, method="online", round=round, run_id=run_id)

    answers, q_dev = dev_answers(policy_path, prompts, dev_sampling, Path(dev_dir), run_id, batch_size)
    heldout, q_dev_score = dev_drift(answers, prompts, scorer, fidelity, run_id)
    quarantine = pl.concat([q_gen, q_score, q_dev, q_dev_score], how="diagonal_relaxed")
    return OnlineRound(gens, scores, pairs, quarantine, stats, heldout)


# --- the dev judge and the decision (pure) -------------------------------------------------------


def judge_on_dev(judge, prompts: pl.DataFrame, new: pl.DataFrame, previous: pl.DataFrame, new_id: str,
                 previous_id: str, stage: str, run_id: str, opponent: str = PREVIOUS_POLICY) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The new policy's dev answers (A) against the previous policy's (B), by the evaluation's judge
    (`factory.evaluation.judge_against_baseline` on the dev split; never the eval prompts); `opponent`
    names B in the judgments. (judgments, quarantine)."""
    return judge_against_baseline(judge, prompts, new, previous, new_id, previous_id, stage, run_id, opponent=opponent, split="dev")


def dev_counts(judgments: pl.DataFrame) -> dict:
    """n, wins, ties, losses and win_rate (ties half) pooled over every judged dev prompt."""
    v = judgments["verdict"] if judgments.height else pl.Series([], dtype=pl.String)
    wins, ties, losses = int((v == "win").sum()), int((v == "tie").sum()), int((v == "loss").sum())
    n = wins + ties + losses
    return {"n": n, "wins": wins, "ties": ties, "losses": losses, "win_rate": (wins + ties / 2) / n if n else None}


def dev_figures(judgments: pl.DataFrame, config: WinRateConfig | None = None) -> dict:
    """The head-to-head on dev: `dev_counts` pooled over every dev prompt (what the decision uses: each
    prompt weighs the same, languages have 1-15 dev prompts), and the macro average over languages with
    its CI and mdd (as the eval table reports)."""
    out = dev_counts(judgments)
    if out["n"]:
        macro = win_rates(judgments, config).filter(pl.col("language") == "all").row(0, named=True)
        out |= {f"macro_{c}": float(macro[c]) for c in ("win_rate", "ci_low", "ci_high", "mdd")}
    return out


def dev_decision(figures: dict, stop_below: float) -> str:
    """continue, or stop when the new policy's pooled dev win rate against the previous policy is below
    `stop_below` (0.5: it lost more dev prompts than it won). Without verdicts the round continues."""
    if not figures.get("n"):
        return NO_DEV
    return STOP if figures["win_rate"] < stop_below else CONTINUE


def pick_candidate(candidates: list[dict]) -> int:
    """Index of the candidate to keep: the highest pooled dev win rate; ties go to the first listed. A
    candidate without dev verdicts (all quarantined: the judge failed) comes after every judged one,
    so it can neither beat a measured candidate nor skip the stop rule; only when none was judged is
    the first kept. Picking the best of several on the same dev prompts flatters it a little (the
    winner's curse); the stop rule sees the picked one's figure."""
    rates = [c["dev"].get("win_rate") if c["dev"].get("n", 1) else None for c in candidates]
    return max(range(len(candidates)), key=lambda i: (rates[i] is not None, rates[i] or 0.0, -i))


def stopped_at(previous_online: dict | None) -> int | None:
    """The round at which an earlier round stopped, from the previous policy's `metrics["online"]`
    (None while rounds go on, and for the offline policy, which has none)."""
    if not previous_online:
        return None
    if previous_online.get("decision") == STOP:
        return int(previous_online["round"])
    return previous_online.get("stopped_at")


def round_record(round: int, decision: str, candidates: list[dict], kept: int | None, previous: dict,
                 stopped: int | None = None) -> dict:
    """What a round's checkpoint records under metrics["online"]: the round, the decision, the policy it
    started from and the one it leaves (path, checkpoint id), every beta candidate's training and dev
    figures, and the index of the kept one (None when stopped or skipped)."""
    kept_row = candidates[kept] if kept is not None else None
    return {
        "round": round,
        "decision": decision,
        "stopped_at": stopped if stopped is not None else (round if decision == STOP else None),
        "previous_policy": previous["checkpoint_id"],
        "policy_path": kept_row["path"] if kept_row else previous["path"],
        "kept_beta": kept_row["beta"] if kept_row else None,
        "candidates": candidates,
    }


class OnlineConfig(Strict):
    """Online iterative DPO: 3 rounds, as in Aya Expanse (beyond 3 gave little and risked reward hacking).

    `betas` has one entry per round: a beta, or a list of candidate betas that are all trained and
    judged on dev (the best is kept). `stop_below`: a round whose kept candidate's dev win rate against
    the previous policy is below it stops the rounds (see the module docstring)."""

    k: int = Field(4, ge=2)  # samples per prompt from the current policy
    betas: list[float | list[float]] = Field(default_factory=lambda: [0.1, 0.1, 0.1], min_length=3, max_length=3)
    stop_below: float = Field(0.5, ge=0.0, le=1.0)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.95))
    dev_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0))
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    batch_size: int = 32

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: list) -> list:
        # A single beta's sign is checked with every other positive field (assets.config); lists here.
        for i, entry in enumerate(value, 1):
            if not isinstance(entry, list):
                continue
            if not entry:
                raise ValueError(f"round {i}: an empty list of beta candidates")
            if any(b <= 0 for b in entry):
                raise ValueError(f"round {i}: beta candidates must be positive, got {entry}")
            if len(set(entry)) != len(entry):
                raise ValueError(f"round {i}: beta candidates repeat: {entry}")
        return value

    def candidates(self, round: int) -> list[float]:
        """Round `round`'s beta candidates (1-based)."""
        entry = self.betas[round - 1]
        return list(entry) if isinstance(entry, list) else [entry]
