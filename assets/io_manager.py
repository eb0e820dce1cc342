"""The Dagster IO manager: assets return polars DataFrames, this writes them.

Assets never write table files by hand. Each output becomes one table partition
(atomic), gets a lineage row (run, code version, input data versions, row
count) and generic metadata: rows, the column schema (with each column's
description from factory/schemas.py), per-language counts as a table, a preview,
and the written file's path relative to FACTORY_HOME (so the home can move).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets.config import config_option
from factory.version import code_version
from warehouse import schemas
from warehouse.home import home_option
from warehouse.status import markdown_table
from warehouse.store import Warehouse

# Inputs each step loaded, so its output's lineage row can name their versions.
# Keyed by (run_id, step_key): load_input and handle_output of one step always run
# in the same process, whichever executor runs the step.
_LOADED: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
_STARTED: dict[tuple[str, str], datetime] = {}


SIDE_OUTPUT = "side_output"  # output metadata: a table a step writes beside its main output (not shown in progress)


def table_name(asset: str, definition_metadata: dict | None) -> str:
    return str((definition_metadata or {}).get("table", asset))


def producer_name(definition_metadata: dict | None) -> str | None:
    value = (definition_metadata or {}).get("producer")
    return str(value) if value else None


def partition_for(asset: str, table: str, partition_key: str | None, producer: str | None = None) -> dict[str, str]:
    """Where an asset's output lives in its table: a shared table gets a producer folder (the asset's
    name, or the `producer` its definition metadata names: a step's side outputs share its folder)."""
    part: dict[str, str] = {}
    if table != asset:
        part["producer"] = producer or asset
    if partition_key is not None:
        part["language"] = partition_key
    return part


def column_schema(schema: Mapping[str, pl.DataType], table: str | None = None) -> dg.TableSchema:
    """Dagster column schema: each column's name, dtype and description in `table`."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(dtype), description=schemas.column_description(table, name) if table else None)
            for name, dtype in schema.items()
        ]
    )


def _table_type(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    return "bool" if dtype == pl.Boolean else "string"


def metadata_table(df: pl.DataFrame) -> dg.TableMetadataValue:
    """`df` as Dagster table metadata (shown as a table, not as one number per key plotted over time).

    Numbers and booleans stay typed; other values become strings.
    """
    types = {c: _table_type(t) for c, t in df.schema.items()}

    def cell(value, kind: str):
        if value is None or kind != "string":
            return value
        return value if isinstance(value, str) else str(value)

    records = [dg.TableRecord({c: cell(v, types[c]) for c, v in row.items()}) for row in df.iter_rows(named=True)]
    return dg.MetadataValue.table(
        records, schema=dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in types.items()])
    )


def frame_metadata(
    df: pl.DataFrame, preview_rows: int = 5, table: str | None = None, schema: Mapping[str, pl.DataType] | None = None
) -> dict:
    """Row count, column schema (`schema`, by default df's; described when `table` is declared),
    per-language counts and a preview, for the Dagster UI."""
    meta: dict = {"dagster/row_count": df.height, "dagster/column_schema": column_schema(schema or df.schema, table)}
    if "language" in df.columns and df.height:
        counts = df.group_by("language").agg(pl.len().cast(pl.Int64).alias("rows")).sort("language")
        meta["per_language"] = metadata_table(counts)
    if df.height:
        preview = df.head(preview_rows).select(
            [pl.col(c).cast(pl.String, strict=False).str.slice(0, 80) if dt == pl.String else pl.col(c)
             for c, dt in df.schema.items() if dt.is_numeric() or dt == pl.String or dt == pl.Boolean]
        )
        meta["preview"] = dg.MetadataValue.md(markdown_table(preview))
    return meta


class MissingUpstream(RuntimeError):
    """An asset's input has no data at all in this home (never materialized)."""


class WarehouseIOManager(dg.ConfigurableIOManager):
    """Stores asset outputs as Parquet partitions in FACTORY_HOME, with lineage."""

    home: str | None = None

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(f"asset {context.asset_key.to_user_string()} must return a polars DataFrame, got {type(obj)!r}")
        asset = context.asset_key.to_python_identifier()
        table = table_name(asset, context.definition_metadata)
        pkey = context.partition_key if context.has_partition_key else None
        wh = Warehouse(self.home)
        result = wh.write_table(table, obj, partition_for(asset, table, pkey, producer_name(context.definition_metadata)))
        step = (context.run_id, context.step_key)
        wh.record_lineage(
            asset=asset,
            table=table,
            partition=pkey,
            run_id=context.run_id,
            code_version=code_version(),
            result=result,
            # .get, not .pop: a step with several outputs (a side table) records the same inputs for each
            input_versions=dict(_LOADED.get(step, {})),
            started_at=_STARTED.get(step, datetime.now(UTC)),
        )
        # The schema as stored (conformed, with partition columns such as producer), known from the write.
        meta = frame_metadata(obj, table=table, schema=result.schema)
        # Relative to the home, so the metadata stays true when FACTORY_HOME is moved or copied.
        meta.update({"table": table, "path": result.relpath, "data_version": result.data_version})
        context.add_output_metadata(meta)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        upstream = context.upstream_output
        asset = context.asset_key.to_python_identifier()
        definition = upstream.definition_metadata if upstream else None
        table, producer = table_name(asset, definition), producer_name(definition)
        wh = Warehouse(self.home)
        keys = context.asset_partition_keys if context.has_asset_partitions else [None]
        frames = []
        sc = context.step_context
        step = (sc.run_id, sc.step.key) if sc else None
        present = {key: wh.has(table, partition_for(asset, table, key, producer)) for key in keys}
        if not any(present.values()):
            which = asset if keys == [None] else f"{asset}[{keys[0]}]" if len(keys) == 1 else f"{asset} ({len(keys)} partitions)"
            needed_by = sc.step.key if sc else "ASSET"
            raise MissingUpstream(
                f"upstream {which} has not been materialized in {wh.home}: "
                f"`factory run --select +{needed_by}{config_option()}{home_option(self.home)}` builds it and everything it needs"
            )
        if missing := [str(key) for key, ok in present.items() if not ok]:  # a run of some languages: says which are left out
            context.log.warning(f"{asset}: {len(missing)} of {len(keys)} partitions were never materialized and read as empty: "
                                f"{', '.join(missing)}")
        for key in keys:
            part = partition_for(asset, table, key, producer)
            frames.append(wh.read_table(table, part))
            if step:
                _STARTED.setdefault(step, datetime.now(UTC))
                _LOADED[step][f"{asset}[{key}]" if key else asset] = wh.version(table, part)
        return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
