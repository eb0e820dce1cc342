"""Resources shared by every asset: the warehouse home and the run configuration."""

from __future__ import annotations

import dagster as dg

from factory.config import FactoryConfig, load_config
from warehouse.store import Warehouse


class FactoryResource(dg.ConfigurableResource):
    """FACTORY_HOME and the YAML config. Both default to their env vars (FACTORY_HOME,
    FACTORY_CONFIG), else ./factory_home and the embedded default config."""

    home: str | None = None
    config_path: str | None = None

    def warehouse(self) -> Warehouse:
        return Warehouse(self.home)

    def settings(self) -> FactoryConfig:
        return load_config(self.config_path)
