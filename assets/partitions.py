"""Language partitions: one per language of a config."""

from __future__ import annotations

import dagster as dg

from assets.config import FactoryConfig, active_config


def partitions_for(cfg: FactoryConfig) -> dg.StaticPartitionsDefinition:
    """The language partitions of `cfg`, in its order."""
    return dg.StaticPartitionsDefinition(list(cfg.languages))


# What the asset modules are decorated with: the languages of FACTORY_CONFIG at import.
# assets.definitions.build_definitions swaps in the partitions of the config it is given.
language_partitions = partitions_for(active_config())
