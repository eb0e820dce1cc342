"""The reward judge: pairwise verdicts from an independent reward model's scores.

Use a reward model other than the Arbiter that selected the training data,
otherwise the evaluation only measures agreement with the Arbiter.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from factory.judges.base import JudgePrompt, Verdict, check_lengths, outcome_from_difference
from factory.scoring.base import RewardScorer


class RewardJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tie_margin: float = 0.1  # |reward_a - reward_b| within this is a tie (0.1 ~ P(A>B)=0.52 under Bradley-Terry)


class RewardJudge:
    """A wins when its reward exceeds B's by more than `tie_margin`; a missing reward is unparsed."""

    def __init__(self, scorer: RewardScorer, config: RewardJudgeConfig | None = None) -> None:
        self.scorer = scorer
        self.config = config or RewardJudgeConfig()
        self.name = f"reward:{scorer.name}"

    def judge(self, prompts: list[JudgePrompt], answers_a: list[str], answers_b: list[str]) -> list[Verdict]:
        check_lengths(prompts, answers_a, answers_b)
        conversations = [[{"role": "user", "content": p["text"]}] for p in prompts]
        rewards = self.scorer.score(conversations + conversations, list(answers_a) + list(answers_b))
        n = len(prompts)
        verdicts = []
        for ra, rb in zip(rewards[:n], rewards[n:], strict=True):
            if ra is None or rb is None:
                verdicts.append(Verdict("unparsed", f"scorer {self.scorer.name} returned no reward (A={ra}, B={rb})"))
                continue
            diff = ra - rb
            verdicts.append(
                Verdict(
                    outcome_from_difference(diff, self.config.tie_margin), f"reward A={ra:.3f} B={rb:.3f}", abs(diff)
                )
            )
        return verdicts
