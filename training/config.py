"""The `training` section of the run config: SFT, offline DPO, online rounds (the `merge` section is
training.merge.config.MergeSettings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from factory.pairs import PAIR_BUILDERS
from factory.settings import Strict
from training.dpo import DPOStageConfig
from training.online import OnlineConfig
from training.sft import SFTStageConfig

# The pair methods of the offline `preference_pairs` table (online pairs live in their own tables).
OFFLINE_PAIR_METHODS = [m for m in PAIR_BUILDERS if m != "online"]


class ClusterTrainingConfig(Strict):
    """How each language-cluster model is trained before the merge.

    `start`: the checkpoint every cluster model starts from: `sft_model` (the arbitrage SFT model,
    trained on every language: a shared, already-good common ancestor, which is what Aya Expanse merges
    from) or `base` (the pretrained `training.base_model`; four models fine-tuned from it on disjoint
    data drift apart). `sft`: SFT on the cluster's own rows (its languages plus en/es/fr) before its DPO;
    unset, it is true from `base` (DPO needs an instruction-following policy) and false from `sft_model`
    (that model already had SFT on those rows). The task-vector merges (ties, dare_*) take the cluster
    models' start as their base: task vectors are measured from it. The default was chosen on the dev
    split (docs/RESULTS.md "Cluster models from the SFT model")."""

    start: Literal["sft_model", "base"] = "sft_model"
    sft: bool | None = None

    @model_validator(mode="after")
    def _resolve_sft(self) -> ClusterTrainingConfig:
        if self.sft is None:
            self.sft = self.start == "base"
        elif self.start == "base" and not self.sft:
            raise ValueError(
                "training.clusters: `start: base` with `sft: false` would run DPO on the pretrained base model; "
                "set `sft: true`, or `start: sft_model` to run DPO from the arbitrage SFT model"
            )
        return self


class TrainingConfig(Strict):
    base_model: str = "embedded:base"  # or any causal-LM folder / name
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    # which `preference_pairs` methods offline DPO and the cluster models train on
    dpo_methods: list[str] = Field(default_factory=lambda: list(OFFLINE_PAIR_METHODS))
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    clusters: ClusterTrainingConfig = Field(default_factory=ClusterTrainingConfig)

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
