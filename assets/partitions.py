"""Language partitions, from the active config's languages."""

from __future__ import annotations

import dagster as dg

from factory.config import active_config

language_partitions = dg.StaticPartitionsDefinition(active_config().languages)
