import json

import dagster as dg
import polars as pl
from typer.testing import CliRunner

from factory.cli import app


def test_definitions_load():
    from assets import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "prompts" in keys


def test_materialize_prompts_into_tmp_home(home):
    from assets.definitions import defs
    from assets.prompts.assets import prompts
    from warehouse.store import Warehouse

    result = dg.materialize([prompts], partition_key="es", resources=defs.resources)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"not_empty": True, "unique_prompt_id": True, "splits_disjoint": True}
    wh = Warehouse(home)
    df = wh.read_table("prompts")
    assert df.height > 10 and set(df["language"]) == {"es"}
    lineage = wh.read_table("lineage")
    assert lineage.height == 1
    row = lineage.row(0, named=True)
    assert row["asset"] == "prompts" and row["partition"] == "es" and row["row_count"] == df.height
    assert row["data_version"] == wh.version("prompts", {"language": "es"})
    meta = result.asset_materializations_for_node("prompts")[0].metadata
    c = {k: meta[f"count/{k}"].value for k in ("read", "kept", "quarantined", "duplicates")}
    assert c["read"] == c["kept"] + c["quarantined"] + c["duplicates"]
    # rerun: same ids, no duplication
    assert dg.materialize([prompts], partition_key="es", resources=defs.resources).success
    again = wh.read_table("prompts")
    assert sorted(again["prompt_id"]) == sorted(df["prompt_id"])


def test_cli_sql_reads_and_refuses_writes(home):
    from warehouse.store import Warehouse

    Warehouse(home).write_table("prompts", pl.DataFrame({
        "prompt_id": ["p_1"], "language": ["es"], "text": ["hola"], "split": ["train"], "source": ["t"],
        "origin": ["native"], "references": [["adiós"]], "run_id": ["r"]}), {"language": "es"})
    runner = CliRunner()
    ok = runner.invoke(app, ["sql", "select language, count(*) n from prompts group by 1", "--format", "json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output) == [{"language": "es", "n": 1}]
    csv = runner.invoke(app, ["sql", "select \"references\" from prompts", "-f", "csv"])
    assert csv.exit_code == 0 and "adiós" in csv.output
    refused = runner.invoke(app, ["sql", "drop view prompts"])
    assert refused.exit_code == 2 and "read-only" in refused.output
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and "prompts" in status.output
