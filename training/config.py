"""The `training` section of the run config: SFT, offline DPO, online rounds (the `merge` section is
training.merge.config.MergeSettings)."""

from __future__ import annotations

from pydantic import Field, field_validator

from factory.pairs import PAIR_BUILDERS
from factory.settings import Strict
from training.dpo import DPOStageConfig
from training.online import OnlineConfig
from training.sft import SFTStageConfig

# The pair methods of the offline `preference_pairs` table (online pairs live in their own tables).
OFFLINE_PAIR_METHODS = [m for m in PAIR_BUILDERS if m != "online"]


class TrainingConfig(Strict):
    base_model: str = "embedded:base"  # or any causal-LM folder / name
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    # which `preference_pairs` methods offline DPO and the cluster models train on
    dpo_methods: list[str] = Field(default_factory=lambda: list(OFFLINE_PAIR_METHODS))
    online: OnlineConfig = Field(default_factory=OnlineConfig)

    @field_validator("dpo_methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in OFFLINE_PAIR_METHODS]
        if unknown:
            raise ValueError(
                f"unknown pair method(s) {', '.join(map(repr, unknown))}; known: {', '.join(OFFLINE_PAIR_METHODS)}"
            )
        if not value:
            raise ValueError(f"at least one pair method is needed; known: {', '.join(OFFLINE_PAIR_METHODS)}")
        return value
