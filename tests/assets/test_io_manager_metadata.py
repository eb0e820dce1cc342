"""What the IO manager tells the Dagster UI: described columns, per-language counts as a table,
paths relative to FACTORY_HOME."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from assets.io_manager import WarehouseIOManager, frame_metadata, metadata_table
from warehouse import schemas


def pairs_frame() -> pl.DataFrame:
    df = pl.DataFrame(
        {"language": ["fr", "fr", "en"], "margin": [0.5, 1.0, 2.0], "extra_column": [1, 2, 3]},
    )
    return df


@pytest.mark.parametrize("table", sorted(schemas.TABLES))
def test_every_declared_column_is_described(table):
    missing = [c for c in schemas.TABLES[table] if not schemas.column_description(table, c)]
    assert not missing, f"{table}: no description for {missing}"


def test_column_schema_carries_descriptions_per_table():
    columns = {
        c.name: c for c in frame_metadata(pairs_frame(), table="preference_pairs")["dagster/column_schema"].columns
    }
    assert columns["margin"].description == schemas.TABLE_COLUMN_DOCS["preference_pairs"]["margin"]
    assert columns["language"].description == schemas.COLUMN_DOCS["language"]
    assert columns["margin"].type == "Float64"
    assert columns["extra_column"].description is None  # an undeclared column is left undescribed
    selections = {c.name: c for c in frame_metadata(pairs_frame(), table="selections")["dagster/column_schema"].columns}
    assert selections["margin"].description != columns["margin"].description  # same name, another meaning
    anonymous = frame_metadata(pairs_frame())["dagster/column_schema"].columns
    assert all(c.description is None for c in anonymous)


def test_per_language_counts_are_a_table():
    value = frame_metadata(pairs_frame())["per_language"]
    assert isinstance(value, dg.TableMetadataValue)
    assert [r.data for r in value.records] == [{"language": "en", "rows": 1}, {"language": "fr", "rows": 2}]
    assert [(c.name, c.type) for c in value.schema.columns] == [("language", "string"), ("rows", "int")]


def test_metadata_table_keeps_numbers_and_stringifies_the_rest():
    df = pl.DataFrame(
        {"stage": ["a", None], "rate": [0.25, None], "n": [3, 4], "ok": [True, False], "ids": [["x"], []]}
    )
    value = metadata_table(df)
    assert [r.data for r in value.records] == [
        {"stage": "a", "rate": 0.25, "n": 3, "ok": True, "ids": "['x']"},
        {"stage": None, "rate": None, "n": 4, "ok": False, "ids": "[]"},
    ]
    assert [c.type for c in value.schema.columns] == ["string", "float", "int", "bool", "string"]


def test_materialization_metadata_is_described_and_home_relative(home):
    row = {"stage": "dpo_offline", "model": "ck_m", "baseline": "ck_b", "wins": 3, "ties": 1, "losses": 0}
    row |= {"win_rate": 0.875, "ci_low": 0.6, "ci_high": 1.0, "run_id": "r"}

    @dg.asset(io_manager_key="warehouse", metadata={"table": "win_rates"})
    def stage_rates() -> pl.DataFrame:
        return pl.DataFrame([{**row, "language": "fr"}, {**row, "language": "all"}], schema=schemas.WIN_RATES)

    result = dg.materialize([stage_rates], resources={"warehouse": WarehouseIOManager(home=str(home))})
    assert result.success
    meta = result.asset_materializations_for_node("stage_rates")[0].metadata
    path = meta["path"].value
    assert path == "tables/win_rates/producer=stage_rates/data.parquet"
    assert (home / path).is_file()
    assert str(home) not in str({k: v.value for k, v in meta.items()})
    columns = {c.name: c.description for c in meta["dagster/column_schema"].value.columns}
    assert columns["language"] == schemas.TABLE_COLUMN_DOCS["win_rates"]["language"]
    assert columns["producer"] == schemas.COLUMN_DOCS["producer"]
    assert all(columns.values())
    assert [r.data for r in meta["per_language"].value.records] == [
        {"language": "all", "rows": 1},
        {"language": "fr", "rows": 1},
    ]


def test_partitions_never_materialized_are_named_in_a_warning(home):
    """An unpartitioned step reads every partition of its input; the ones never materialized read as
    empty (a run of some languages), and the step's log says which."""
    import logging

    langs = dg.StaticPartitionsDefinition(["de", "es", "fr"])

    row = {"stage": "sft", "model": "ck_m", "baseline": "ck_b", "wins": 3, "ties": 1, "losses": 0, "win_rate": 0.875, "run_id": "r"}

    @dg.asset(io_manager_key="warehouse", partitions_def=langs, metadata={"table": "win_rates"})  # a declared table
    def rows_by_language(context) -> pl.DataFrame:
        return pl.DataFrame([{**row, "language": context.partition_key}], schema=schemas.WIN_RATES)

    @dg.asset(io_manager_key="warehouse")
    def all_rows(rows_by_language: pl.DataFrame) -> pl.DataFrame:
        return rows_by_language

    resources = {"warehouse": WarehouseIOManager(home=str(home))}
    for key in ("de", "fr"):
        assert dg.materialize([rows_by_language], partition_key=key, resources=resources).success
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([all_rows, rows_by_language], selection=[all_rows], resources=resources, instance=instance)
    assert result.success
    assert result.output_for_node("all_rows")["language"].sort().to_list() == ["de", "fr"]
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("1 of 3 partitions were never materialized and read as empty: es" in m for m in warnings), warnings
