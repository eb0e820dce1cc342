"""The `arbitrage` section: which routing strategies run, the learned router, decontamination."""

from __future__ import annotations

from pydantic import Field, model_validator

from factory.decontam import DecontamConfig
from factory.learned_router import RouterConfig
from factory.routing import STRATEGIES, RoutingConfig
from factory.settings import Strict

STRATEGY_NAMES = list(STRATEGIES)


class ArbitrageConfig(Strict):
    strategies: list[str] = Field(default_factory=lambda: list(STRATEGY_NAMES))
    sft_strategy: str = "reward_routing"  # whose selections become sft_data for sft_model
    baseline_strategy: str = "single_teacher"  # sft_model_single_teacher's data
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    # Remove eval-contaminated rows before writing. Off, contaminated rows are written and the
    # blocking `decontaminated` checks fail, stopping training downstream.
    decontaminate: bool = True

    @model_validator(mode="after")
    def _known(self):
        for s in [*self.strategies, self.sft_strategy, self.baseline_strategy]:
            if s not in STRATEGY_NAMES:
                raise ValueError(f"unknown strategy {s!r}; known: {', '.join(STRATEGY_NAMES)}")
        for s in (self.sft_strategy, self.baseline_strategy):
            if s not in self.strategies:
                raise ValueError(f"{s!r} must also be listed in strategies")
        return self
