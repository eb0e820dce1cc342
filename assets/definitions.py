"""The Dagster Definitions: every asset, check and resource of the factory.

`build_definitions(config_path, home)` builds them for one config and home: the language partitions
come from that config's languages and the resources point at that home, so a process that rebuilds
a job (a worker of `factory run --workers N`, a run pod on Kubernetes) needs no env var read at
import. `defs` (what `dagster dev -m assets` loads) is built from FACTORY_CONFIG and FACTORY_HOME.
"""

from __future__ import annotations

import os

import dagster as dg

from assets.arbitrage.assets import generations, preference_pairs, router, routing_stats, scores, selections, sft_data
from assets.config import load_config
from assets.evaluation.assets import judgments, published_datasets, win_rates
from assets.io_manager import WarehouseIOManager
from assets.models.assets import arbiter, embedded_pool, model_sources
from assets.partitions import language_partitions, partitions_for
from assets.prompts.assets import prompts
from assets.resources import FactoryResource, ModelServers
from assets.training.assets import TRAINING_ASSETS

# As imported: partitioned by the languages of FACTORY_CONFIG (tests materialize these directly).
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


def build_assets(config_path: str | os.PathLike | None = None) -> list[dg.AssetsDefinition]:
    """ALL_ASSETS, partitioned by the languages of `config_path` (default: FACTORY_CONFIG)."""
    languages = partitions_for(load_config(config_path))
    if languages == language_partitions:
        return list(ALL_ASSETS)

    def repartition(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(partitions_def=languages) if spec.partitions_def is not None else spec

    return [a.map_asset_specs(repartition) if a.partitions_def is not None else a for a in ALL_ASSETS]


def build_definitions(
    config_path: str | os.PathLike | None = None, home: str | os.PathLike | None = None,
    jobs: list[dg.UnresolvedAssetJobDefinition] | None = None,
) -> dg.Definitions:
    """The factory's Definitions for one config and one home (each None: its env var at run time,
    FACTORY_CONFIG / FACTORY_HOME, as `dagster dev` expects), with `jobs` added."""
    config = str(config_path) if config_path is not None else None
    root = str(home) if home is not None else None
    return dg.Definitions(
        assets=build_assets(config_path),
        jobs=jobs or [],
        resources={
            "env": FactoryResource(home=root, config_path=config),
            "servers": ModelServers(),
            "warehouse": WarehouseIOManager(home=root),
        },
    )


defs = build_definitions()
