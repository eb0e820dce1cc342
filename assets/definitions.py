"""The Dagster Definitions: every asset, check and resource of the factory."""

import dagster as dg

from assets.arbitrage.assets import generations, preference_pairs, router, routing_stats, scores, selections, sft_data
from assets.evaluation.assets import judgments, published_datasets, win_rates
from assets.models.assets import arbiter, embedded_pool, model_sources
from assets.prompts.assets import prompts
from assets.resources import FactoryResource, ModelServers
from assets.training.assets import TRAINING_ASSETS
from warehouse.io_manager import WarehouseIOManager

ALL_ASSETS = [
    prompts,
    model_sources,
    embedded_pool,
    arbiter,
    generations,
    scores,
    router,
    selections,
    routing_stats,
    sft_data,
    preference_pairs,
    *TRAINING_ASSETS,
    judgments,
    win_rates,
    published_datasets,
]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    resources={
        "factory": FactoryResource(),
        "servers": ModelServers(),
        "warehouse": WarehouseIOManager(),
    },
)
