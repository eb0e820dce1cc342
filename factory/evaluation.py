"""Evaluation glue: each model answers the eval split; a judge compares it with the baseline.

Reads prompts [prompt_id, language, text, references, split]; writes JUDGMENTS rows.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from pydantic import Field, model_validator

from factory.generation.base import SamplingConfig
from factory.generation.registry import TeacherConfig, make_backend
from factory.generation.runner import generate_completions
from factory.judges import JudgeConfig
from factory.judges.base import judgments_frame
from factory.settings import Strict
from factory.winrates import WinRateConfig

# (stage label, model asset) in the order of the step-by-step picture.
STAGES: list[tuple[str, str]] = [
    ("sft_arbitrage", "sft_model"),
    ("dpo_offline", "dpo_offline_model"),
    ("dpo_online_1", "dpo_online_round_1"),
    ("dpo_online_2", "dpo_online_round_2"),
    ("dpo_online_3", "dpo_online_round_3"),
    ("merged", "merged_model"),
]
BASELINE = "sft_model_single_teacher"
EVALUATED = [BASELINE, *(name for _, name in STAGES)]  # every model that answers the eval split


def answer_eval(checkpoint: dict, prompts: pl.DataFrame, sampling: SamplingConfig, shard_dir: Path, run_id: str,
                batch_size: int = 32) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The model's answers to the eval split (one each; resumable shards keyed by checkpoint id)."""
    teacher = TeacherConfig(name=f"eval@{checkpoint['checkpoint_id']}", model=str(checkpoint["path"]),
                            sampling=sampling, batch_size=batch_size)
    eval_prompts = prompts.filter(pl.col("split") == "eval")
    return generate_completions(eval_prompts, [(teacher, make_backend(teacher))], 1, shard_dir, run_id, progress=False)


def evaluate_models(judge, prompts: pl.DataFrame, models: dict[str, dict], sampling: SamplingConfig, staging: Path,
                    run_id: str, batch_size: int = 32) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame]:
    """Every model in `models` (name -> checkpoint row; EVALUATED) answers the eval split, and every
    stage is judged against the baseline: (answers per model, judgments, quarantine)."""
    answers, quarantined = {}, []
    for name in EVALUATED:
        ck = models[name]
        answers[name], q = answer_eval(ck, prompts, sampling, staging / ck["checkpoint_id"], run_id, batch_size)
        quarantined.append(q)
    frames = []
    for stage, name in STAGES:
        j, q = judge_against_baseline(judge, prompts, answers[name], answers[BASELINE], models[name]["checkpoint_id"],
                                      models[BASELINE]["checkpoint_id"], stage, run_id)
        frames.append(j)
        quarantined.append(q)
    return answers, pl.concat(frames, how="diagonal_relaxed"), pl.concat(quarantined, how="diagonal_relaxed")


def judge_against_baseline(judge, prompts: pl.DataFrame, answers: pl.DataFrame, baseline_answers: pl.DataFrame,
                           model_id: str, baseline_id: str, stage: str, run_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Judge model (A) vs baseline (B) on every eval prompt both answered."""

    both = (
        prompts.filter(pl.col("split") == "eval")
        .join(answers.select("prompt_id", pl.col("text").alias("a")), on="prompt_id")
        .join(baseline_answers.select("prompt_id", pl.col("text").alias("b")), on="prompt_id")
        .sort("language", "prompt_id")
    )
    jp = [{"prompt_id": r["prompt_id"], "language": r["language"], "text": r["text"], "references": list(r["references"] or [])}
          for r in both.iter_rows(named=True)]
    a, b = both["a"].to_list(), both["b"].to_list()
    verdicts = judge.judge(jp, a, b)
    order = "both" if getattr(judge, "name", "") == "llm" else "ab"
    return judgments_frame(jp, a, b, verdicts, judge=judge.name, model=model_id, baseline=baseline_id,
                           stage=stage, run_id=run_id, order=order)


class EvaluationConfig(Strict):
    judge: JudgeConfig = Field(default_factory=JudgeConfig)  # name: reference (default), reward or llm
    winrates: WinRateConfig = Field(default_factory=WinRateConfig)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0))
    batch_size: int = 32
    judge_model: TeacherConfig | None = None  # the `llm` judge's backend (e.g. an OpenAI-compatible server)
    reward_model: str | None = None  # the `reward` judge's model: an independent RM, never the Arbiter

    @model_validator(mode="after")
    def _judge_inputs(self):
        if self.judge.name == "llm" and self.judge_model is None:
            raise ValueError("judge `llm` needs evaluation.judge_model (a backend config)")
        if self.judge.name == "reward" and not self.reward_model:
            raise ValueError("judge `reward` needs evaluation.reward_model (an independent reward model path)")
        return self
