"""Cluster models' start (training.clusters): the setting is validated, the cluster models start from the
model it names (their parents, their weights), their ids change with the recipe, and a TIES merge of them
measures its task vectors from that start."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from training.config import ClusterTrainingConfig, TrainingConfig

MSG = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
TEXTS = ["hello, how are you?", "I am fine, thank you.", "what is your name?", "my name is bot."]


def test_the_setting_is_validated():
    assert ClusterTrainingConfig() == ClusterTrainingConfig(start="sft_model", sft=False)  # chosen on dev
    assert ClusterTrainingConfig(start="base").sft is True  # the old recipe: DPO needs an SFT policy
    assert ClusterTrainingConfig(start="sft_model", sft=True).sft is True
    assert TrainingConfig.model_validate({"clusters": {"start": "sft_model", "sft": False}}).clusters.start == "sft_model"
    with pytest.raises(ValidationError, match="sft_model"):
        ClusterTrainingConfig(start="dpo_offline_model")
    with pytest.raises(ValidationError, match="DPO on the pretrained base"):
        ClusterTrainingConfig(start="base", sft=False)
    with pytest.raises(ValidationError, match="extra"):
        TrainingConfig.model_validate({"clusters": {"from": "sft_model"}})


def test_the_recipe_is_in_the_checkpoint_config_so_ids_change_with_it():
    from assets.common import checkpoint_frame
    from training.clusters import cluster_recipe

    recipes = [
        TrainingConfig.model_validate({"clusters": c})
        for c in ({"start": "base"}, {"start": "sft_model", "sft": True}, {"start": "sft_model"})
    ]
    configs = [cluster_recipe(r) for r in recipes]
    assert [c["start"] for c in configs] == ["base", "sft_model", "sft_model"] and configs[2]["sft"] is None
    ids = {
        checkpoint_frame([{"stage": "cluster", "name": "west_european", "path": "x", "config": c}], "r")["checkpoint_id"][0]
        for c in configs
    }
    assert len(ids) == 3


def _rows(table: str, rows: list[dict]) -> pl.DataFrame:
    from warehouse import schemas

    df = pl.DataFrame(rows, schema_overrides={c: MSG for c in ("prompt", "completion", "chosen", "rejected")})
    return df.with_columns([pl.lit(None, t).alias(c) for c, t in schemas.TABLES[table].items() if c not in df.columns])


def _home_with_upstream(home, base, sft):
    """A home holding what cluster_models and merged_model read: English SFT rows and pairs (every
    cluster shares English), prompts, the embedded pool's base and an sft_model checkpoint."""
    from warehouse.store import Warehouse

    wh = Warehouse(home)
    en = {"language": "en"}
    n = len(TEXTS)
    user = [[{"role": "user", "content": TEXTS[i]}] for i in range(n)]
    reply = [[{"role": "assistant", "content": TEXTS[(i + 1) % n]}] for i in range(n)]
    wh.write_table("prompts", _rows("prompts", [
        {"prompt_id": f"p{i}", "language": "en", "text": TEXTS[i], "split": "train"} for i in range(n)]), en)
    wh.write_table("sft_data", _rows("sft_data", [
        {"prompt": user[i], "completion": reply[i], "prompt_id": f"p{i}", "language": "en",
         "strategy": "reward_routing", "completion_id": f"c{i}"} for i in range(n)]), en)
    wh.write_table("preference_pairs", _rows("preference_pairs", [
        {"pair_id": f"pair{i}", "prompt_id": f"p{i}", "language": "en", "method": "best_worst", "round": 0,
         "prompt": user[i], "chosen": reply[i], "rejected": [{"role": "assistant", "content": "zz qq zz"}]}
        for i in range(n)]), en)
    for asset, name, path in (("embedded_pool", "base", base), ("sft_model", "sft_model", sft)):
        wh.write_table("checkpoints", _rows("checkpoints", [
            {"checkpoint_id": f"ck_{name}", "stage": name, "name": name, "path": str(path), "parents": [],
             "metrics": "{}"}]), {"producer": asset})
    return wh


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _distance(a: dict, b: dict) -> float:
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


@pytest.mark.parametrize(("clusters", "start_name"), [
    ({"start": "sft_model", "sft": False}, "sft_model"),
    ({"start": "base", "sft": True}, "base"),
])
def test_cluster_models_start_from_the_configured_model_and_ties_uses_it_as_base(
    home, tmp_path, tiny_lm, clusters, start_name
):
    import dagster as dg

    from assets.definitions import ALL_ASSETS
    from assets.io_manager import WarehouseIOManager
    from assets.resources import FactoryResource, ModelServers

    base, sft = tiny_lm(seed=0), tiny_lm(seed=1)  # same tokenizer; sft_model stands in for a trained SFT model
    wh = _home_with_upstream(home, base, sft)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "languages: [en, es, de, ja, ru]\n"
        f"training: {{clusters: {json.dumps(clusters)}, sft: {{max_steps: 2, batch_size: 2}},"
        " dpo: {max_steps: 2, batch_size: 2, lr: 0.001}}\n"
        "merge: {method: ties, density: 0.5}\n"
    )
    result = dg.materialize(
        ALL_ASSETS, selection=["cluster_models", "merged_model"],
        resources={"env": FactoryResource(home=str(home), config_path=str(cfg)), "servers": ModelServers(),
                   "warehouse": WarehouseIOManager(home=str(home))},
    )
    assert result.success
    ck = wh.read_table("checkpoints")
    start = {"sft_model": sft, "base": base}[start_name]
    cluster = ck.filter(pl.col("stage") == "cluster")
    assert sorted(cluster["name"]) == ["east_asian", "east_european", "west_european"]
    for row in cluster.iter_rows(named=True):
        assert row["parents"] == [f"ck_{start_name}"]
        assert json.loads(row["config"])["start"] == start_name
        assert json.loads(row["metrics"])["start"]["path"] == str(start)
        trained = _weights(Path(row["path"]))
        # trained from the start: moved off it, and much nearer to it than to the other model
        other = {"sft_model": base, "base": sft}[start_name]
        assert 0 < _distance(trained, _weights(start)) < _distance(trained, _weights(other))
    merged = ck.filter(pl.col("stage") == "merged").row(0, named=True)
    assert merged["parents"] == cluster["checkpoint_id"].to_list()
    assert json.loads(merged["metrics"])["base"] == str(start)  # the task vectors' base is the start


def test_merge_base_is_the_common_start_stored_relative_to_the_home(home):
    from assets.training.assets import merge_base
    from warehouse.store import Warehouse

    wh = Warehouse(home)
    (wh.home / "models" / "sft_model").mkdir(parents=True)

    def rows(*paths):
        return pl.DataFrame({"metrics": [json.dumps({"start": {"path": p}} if p else {}) for p in paths]})

    assert wh.relative(str(wh.home / "models" / "sft_model")) == "models/sft_model"  # so the home can move
    assert merge_base(rows("models/sft_model", "models/sft_model"), wh) == str(wh.home / "models" / "sft_model")
    assert merge_base(rows(None, None), wh) is None  # older rows: the caller falls back to training.base_model
    with pytest.raises(ValueError, match="different models"):
        merge_base(rows("models/sft_model", "/elsewhere/base"), wh)
