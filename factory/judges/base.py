"""The pairwise judge interface, shared by the reference, reward and LLM judges.

A judge compares two answers to the same prompt and returns one `Verdict` per
prompt, from A's point of view. Judges never drop a pair: when no verdict can be
obtained (an LLM answer that does not parse after a retry, a scorer that returns
None, a prompt without references) the verdict's outcome is "unparsed" and the
caller quarantines the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict

import polars as pl

from factory.ids import judgment_id
from factory.winrates import BASELINE_STAGE
from warehouse.schemas import JUDGMENTS, conform, rejected, rejected_frame

Outcome = Literal["a_wins", "tie", "b_wins", "unparsed"]
SCORE_OF: dict[str, float] = {"a_wins": 1.0, "tie": 0.5, "b_wins": 0.0}
# Judgments are written from the evaluated model's side: model = A, baseline = B.
VERDICT_OF: dict[str, str] = {"a_wins": "win", "tie": "tie", "b_wins": "loss"}


class JudgePrompt(TypedDict):
    prompt_id: str
    language: str
    text: str
    references: list[str]


@dataclass(frozen=True)
class Verdict:
    """One pairwise verdict for answer A against answer B.

    `score` is A's score (1, 0.5, 0; None when unparsed). `strength` is the
    judge-specific size of the preference (chrF points, reward difference, or the
    Arena-Hard weighted margin); `explanation` says how the verdict was reached.
    """

    outcome: Outcome
    explanation: str = ""
    strength: float | None = None

    @property
    def score(self) -> float | None:
        return SCORE_OF.get(self.outcome)

    @property
    def is_valid(self) -> bool:
        return self.outcome != "unparsed"


def outcome_from_difference(diff: float, tie_within: float) -> Outcome:
    """a_wins when A's advantage exceeds the tie band, b_wins when B's does, else tie."""
    if diff > tie_within:
        return "a_wins"
    if diff < -tie_within:
        return "b_wins"
    return "tie"


class Judge(Protocol):
    name: str

    def judge(self, prompts: list[JudgePrompt], answers_a: list[str], answers_b: list[str]) -> list[Verdict]:
        """One verdict per prompt, A against B (same order as the inputs)."""
        ...


def check_lengths(prompts: list, answers_a: list, answers_b: list) -> None:
    if not (len(prompts) == len(answers_a) == len(answers_b)):
        raise ValueError(
            f"prompts, answers_a, answers_b differ in length: {len(prompts)}, {len(answers_a)}, {len(answers_b)}"
        )


def judgments_frame(
    prompts: list[JudgePrompt],
    model_texts: list[str],
    baseline_texts: list[str],
    verdicts: list[Verdict],
    *,
    judge: str,
    model: str,
    baseline: str,
    stage: str,
    run_id: str = "",
    order: str = "ab",
    opponent: str = BASELINE_STAGE,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Turn verdicts (A = model, B = baseline) into JUDGMENTS rows and quarantine rows.

    Reads: prompt_id, language of each prompt. Writes JUDGMENTS columns plus
    `opponent` (B's stage name, what `stage` is compared against), `explanation` and `strength`; unparsed verdicts go to the quarantine frame
    (row_key = judgment_id, reason, payload) so rows in = kept + quarantined.
    """
    check_lengths(prompts, model_texts, baseline_texts)
    if len(verdicts) != len(prompts):
        raise ValueError("one verdict per prompt expected")
    kept, bad = [], []
    for p, m_text, b_text, v in zip(prompts, model_texts, baseline_texts, verdicts, strict=True):
        row = {
            "judgment_id": judgment_id(p["prompt_id"], model, baseline, judge, order),
            "prompt_id": p["prompt_id"],
            "language": p["language"],
            "judge": judge,
            "model": model,
            "baseline": baseline,
            "stage": stage,
            "opponent": opponent,
            "verdict": VERDICT_OF.get(v.outcome),
            "score": v.score,
            "model_text": m_text,
            "baseline_text": b_text,
            "run_id": run_id,
            "explanation": v.explanation,
            "strength": v.strength,
        }
        if v.is_valid:
            kept.append(row)
        else:
            bad.append(rejected(row["judgment_id"], f"judge {judge} gave no verdict: {v.explanation}", row))
    schema = {**JUDGMENTS, "opponent": pl.String, "explanation": pl.String, "strength": pl.Float64}
    judgments = conform(pl.DataFrame(kept, schema=schema), schema)
    quarantine = rejected_frame(bad)
    return judgments, quarantine
