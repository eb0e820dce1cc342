"""Pairwise judges for evaluation, by name: reference (default), reward, llm.

`build_judge(JudgeConfig(...), scorer=..., backend=...)` makes one; the reward
judge needs a RewardScorer and the LLM judge a GenerationBackend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from factory.judges.base import Judge, JudgePrompt, Verdict, judgments_frame
from factory.judges.llm import LLMJudge, LLMJudgeConfig
from factory.judges.reference import ReferenceJudge, ReferenceJudgeConfig
from factory.judges.reward import RewardJudge, RewardJudgeConfig


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "reference"
    reference: ReferenceJudgeConfig = Field(default_factory=ReferenceJudgeConfig)
    reward: RewardJudgeConfig = Field(default_factory=RewardJudgeConfig)
    llm: LLMJudgeConfig = Field(default_factory=LLMJudgeConfig)


def _reference(config: JudgeConfig, **_: Any) -> Judge:
    return ReferenceJudge(config.reference)


def _reward(config: JudgeConfig, *, scorer: Any = None, **_: Any) -> Judge:
    if scorer is None:
        raise ValueError("the reward judge needs a RewardScorer (scorer=...), independent of the Arbiter")
    return RewardJudge(scorer, config.reward)


def _llm(config: JudgeConfig, *, backend: Any = None, **_: Any) -> Judge:
    if backend is None:
        raise ValueError("the llm judge needs a GenerationBackend (backend=...)")
    return LLMJudge(backend, config.llm)


JUDGES: dict[str, Callable[..., Judge]] = {"reference": _reference, "reward": _reward, "llm": _llm}


def register_judge(name: str, factory: Callable[..., Judge]) -> None:
    """Add a judge factory `factory(config, *, scorer=None, backend=None) -> Judge` under `name`."""
    JUDGES[name] = factory


def build_judge(config: JudgeConfig | None = None, *, scorer: Any = None, backend: Any = None) -> Judge:
    """The judge named by `config.name`, built from its sub-config."""
    config = config or JudgeConfig()
    if config.name not in JUDGES:
        raise KeyError(f"unknown judge {config.name!r}; known: {', '.join(sorted(JUDGES))}")
    return JUDGES[config.name](config, scorer=scorer, backend=backend)


__all__ = [
    "JUDGES",
    "Judge",
    "JudgeConfig",
    "JudgePrompt",
    "LLMJudge",
    "ReferenceJudge",
    "RewardJudge",
    "Verdict",
    "build_judge",
    "judgments_frame",
    "register_judge",
]
