"""The Dagster Definitions: every asset, check and resource of the factory."""

from __future__ import annotations

import dagster as dg

from assets.prompts.assets import prompts
from assets.resources import FactoryResource
from warehouse.io_manager import WarehouseIOManager

ALL_ASSETS = [prompts]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    resources={
        "factory": FactoryResource(),
        "warehouse": WarehouseIOManager(),
    },
)
