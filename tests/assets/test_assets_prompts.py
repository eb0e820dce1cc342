import json

import dagster as dg
import polars as pl
import yaml
from typer.testing import CliRunner

from assets.cli import app


def test_definitions_load():
    from assets.definitions import defs

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
    assert c["read"] == c["kept"] + c["quarantined"] and c["kept"] == df.height
    # rerun: same ids, no duplication
    assert dg.materialize([prompts], partition_key="es", resources=defs.resources).success
    again = wh.read_table("prompts")
    assert sorted(again["prompt_id"]) == sorted(df["prompt_id"])


def test_prompts_counts_reconcile_in_sql(home, tmp_path):
    """read = kept + quarantined per partition, checkable in SQL; rows of a language outside the
    run are quarantined once (by the run's first language), duplicates have quarantine rows."""
    from assets.config import active_config, config_path
    from assets.definitions import defs
    from assets.prompts.assets import prompts
    from assets.resources import FactoryResource
    from warehouse.store import Warehouse

    extra = tmp_path / "extra.jsonl"
    rows = [
        {"prompt": "¿Cuál es tu color favorito en invierno?", "language": "es"},
        {"prompt": "¿Cuál es tu color favorito en invierno?\u200b", "language": "es"},  # duplicate once cleaned
        {"prompt": "\u200b\u200b", "language": "es"},  # zero-width only
        {"prompt": "Quelle est ta couleur préférée ?", "language": "fr"},
        {"prompt": "你最喜欢什么颜色？", "language": "zh_CN"},
    ]
    extra.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = yaml.safe_load(config_path().read_text(encoding="utf-8"))
    cfg["prompts"]["sources"].append({"kind": "jsonl", "path": str(extra)})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    resources = {**defs.resources, "env": FactoryResource(config_path=str(tmp_path / "run.yaml"))}
    first, other = active_config().languages[0], "es"
    assert first != other
    meta = {}
    for lang in (other, first):
        result = dg.materialize([prompts], partition_key=lang, resources=resources)
        assert result.success
        m = result.asset_materializations_for_node("prompts")[0].metadata
        meta[lang] = {k.removeprefix("count/"): v.value for k, v in m.items() if k.startswith("count/")}
    wh = Warehouse(home)
    for lang in (other, first):
        kept = wh.sql(f"select count(*) n from prompts where language = '{lang}'")["n"][0]
        quarantined = wh.sql(f"select count(*) n from quarantine where asset = 'prompts' and partition = '{lang}'")["n"][0]
        assert (kept, quarantined) == (meta[lang]["kept"], meta[lang]["quarantined"])
        assert meta[lang]["read"] == kept + quarantined
    assert meta[other]["unrouted"] == 0 and meta[first]["unrouted"] == 2
    unrouted = wh.sql("select code, reason from quarantine where asset = 'prompts' and partition = 'unrouted' order by reason")
    assert unrouted.rows() == [
        ("language_not_in_run", f"language fr (label 'fr') is not in this run ({', '.join(active_config().languages)})"),
        ("language_not_in_run", f"language zh-Hans (label 'zh_CN') is not in this run ({', '.join(active_config().languages)})"),
    ]
    es = wh.sql("select code, reason from quarantine where partition = 'es' and row_key like 'extra.jsonl:%' order by row_key")
    assert es["code"].to_list() == ["duplicate", "empty"]
    kept_id = es["reason"][0].split()[3]
    assert wh.sql(f"select text from prompts where prompt_id = '{kept_id}'")["text"].to_list() == ["¿Cuál es tu color favorito en invierno?"]


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
