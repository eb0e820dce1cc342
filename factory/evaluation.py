"""Evaluation glue: each model answers the eval split; a judge compares pairs of models.

Three kinds of comparison, told apart by the judgments' `opponent` column (the
stage name of the model B that `stage`'s model A is judged against):
- every stage against the single-teacher SFT baseline (opponent `sft_single_teacher`),
  the step-by-step picture;
- head to head, for the steps that should each add something (HEAD_TO_HEAD): offline
  DPO against arbitrage SFT, directly;
- the merged model against each cluster model on that cluster's own languages
  (opponent `cluster_<name>`; the shared en/es/fr are every cluster's and are left
  out), so win_rates can say whether merging keeps each specialist's quality.

Reads prompts [prompt_id, language, text, references, split]; writes JUDGMENTS rows
plus `opponent`, `explanation` and `strength`.
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
from factory.languages import own_languages
from factory.settings import Strict
from factory.winrates import BASELINE_STAGE, WinRateConfig

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
# (stage, opponent stage) judged directly against each other, beside both against the baseline.
HEAD_TO_HEAD: list[tuple[str, str]] = [("dpo_offline", "sft_arbitrage")]
MERGED_STAGE = "merged"
CLUSTER_PREFIX = "cluster_"  # opponent name of a cluster model: cluster_<cluster name>
CLUSTER_SPECIALISTS = "cluster_specialists"  # the pooled opponent: each language's own cluster model


def answer_eval(checkpoint: dict, prompts: pl.DataFrame, sampling: SamplingConfig, shard_dir: Path, run_id: str,
                batch_size: int = 32) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The model's answers to the eval split (one each; resumable shards keyed by checkpoint id)."""
    teacher = TeacherConfig(name=f"eval@{checkpoint['checkpoint_id']}", model=str(checkpoint["path"]),
                            sampling=sampling, batch_size=batch_size)
    eval_prompts = prompts.filter(pl.col("split") == "eval")
    return generate_completions(eval_prompts, [(teacher, make_backend(teacher))], 1, shard_dir, run_id, progress=False)


def cluster_opponent(cluster: str) -> str:
    return f"{CLUSTER_PREFIX}{cluster}"


def evaluate_models(judge, prompts: pl.DataFrame, models: dict[str, dict], sampling: SamplingConfig, staging: Path,
                    run_id: str, batch_size: int = 32, clusters: list[dict] | None = None,
                    ) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame]:
    """Every model in `models` (name -> checkpoint row; EVALUATED) answers the eval split; every stage
    is judged against the baseline, HEAD_TO_HEAD pairs against each other, and the merged model
    against each of `clusters` (cluster_models rows: name, checkpoint_id, path) on that cluster's own
    languages. Returns (answers per model, cluster models' under `cluster_<name>`; judgments; quarantine)."""
    answers, quarantined = {}, []
    for name in EVALUATED:
        ck = models[name]
        answers[name], q = answer_eval(ck, prompts, sampling, staging / ck["checkpoint_id"], run_id, batch_size)
        quarantined.append(q)
    by_stage = {stage: name for stage, name in STAGES} | {BASELINE_STAGE: BASELINE}
    pairs = [(stage, BASELINE_STAGE) for stage, _ in STAGES] + HEAD_TO_HEAD
    frames = []
    for stage, opponent in pairs:
        a, b = by_stage[stage], by_stage[opponent]
        j, q = judge_against_baseline(judge, prompts, answers[a], answers[b], models[a]["checkpoint_id"],
                                      models[b]["checkpoint_id"], stage, run_id, opponent=opponent)
        frames.append(j)
        quarantined.append(q)
    for ck in clusters or []:
        own = prompts.filter(pl.col("language").is_in(list(own_languages(ck["name"]))))
        if own.filter(pl.col("split") == "eval").is_empty():
            continue
        name = cluster_opponent(ck["name"])
        answers[name], q = answer_eval(ck, own, sampling, staging / ck["checkpoint_id"], run_id, batch_size)
        quarantined.append(q)
        merged = by_stage[MERGED_STAGE]
        j, q = judge_against_baseline(judge, own, answers[merged], answers[name], models[merged]["checkpoint_id"],
                                      ck["checkpoint_id"], MERGED_STAGE, run_id, opponent=name)
        frames.append(j)
        quarantined.append(q)
    return answers, pl.concat(frames, how="diagonal_relaxed"), pl.concat(quarantined, how="diagonal_relaxed")


def judge_against_baseline(judge, prompts: pl.DataFrame, answers: pl.DataFrame, baseline_answers: pl.DataFrame,
                           model_id: str, baseline_id: str, stage: str, run_id: str,
                           opponent: str = BASELINE_STAGE, split: str = "eval") -> tuple[pl.DataFrame, pl.DataFrame]:
    """Judge model (A) vs baseline (B, the `opponent` stage) on every prompt of `split` both answered
    (eval; the online rounds' decisions judge the dev split)."""

    both = (
        prompts.filter(pl.col("split") == split)
        .join(answers.select("prompt_id", pl.col("text").alias("a")), on="prompt_id")
        .join(baseline_answers.select("prompt_id", pl.col("text").alias("b")), on="prompt_id")
        .sort("language", "prompt_id")
    )
    jp = [{"prompt_id": r["prompt_id"], "language": r["language"], "text": r["text"], "references": list(r["references"] or [])}
          for r in both.iter_rows(named=True)]
    a, b = both["a"].to_list(), both["b"].to_list()
    verdicts = judge.judge(jp, a, b)
    order = getattr(judge, "order", "ab")  # the LLM judge's name is "llm:<backend>": ask the judge, not its name
    return judgments_frame(jp, a, b, verdicts, judge=judge.name, model=model_id, baseline=baseline_id,
                           stage=stage, run_id=run_id, order=order, opponent=opponent)


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
