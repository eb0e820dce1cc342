"""The reward-scoring interface (sequence-classifier reward models, LLM judges)."""

from __future__ import annotations

from typing import Protocol

from factory.generation.base import Message


class RewardScorer(Protocol):
    name: str

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float | None]:
        """One reward per (prompt, completion); None means the scorer could not score it
        (e.g. an unparseable judge answer after a retry): the caller quarantines it, never scores it 0."""
        ...
