"""The whole graph on the tiny profile, in a temporary home: every stage runs for real
(tiny models, TRL trainers, real Parquet/DuckDB), and the outputs hang together."""

import json

import polars as pl
import pytest

from factory.evaluation import STAGES
from tests.catalog import query as q


@pytest.fixture(scope="module")
def pipeline_home(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("e2e") / "home"
    old = os.environ.get("FACTORY_HOME")
    os.environ["FACTORY_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / ".dagster")
    try:
        from assets.run import materialize_selection
        from factory.quiet import quiet_libraries

        quiet_libraries()
        materialize_selection(None, None)
    finally:
        os.environ.pop("DAGSTER_HOME", None)
        if old is None:
            os.environ.pop("FACTORY_HOME", None)
        else:
            os.environ["FACTORY_HOME"] = old
    return home


def test_every_training_prompt_answered_by_every_teacher_and_scored(pipeline_home):
    gens = q(pipeline_home, "select * from generations where producer is null")
    train = q(pipeline_home, "select prompt_id from prompts where split = 'train'")
    teachers = gens["teacher"].unique().to_list()
    assert len(teachers) >= 3
    per_prompt = gens.group_by("prompt_id").agg(pl.col("teacher").n_unique().alias("t"))
    assert set(per_prompt["prompt_id"]) == set(train["prompt_id"])
    assert per_prompt["t"].min() == len(teachers)
    scores = q(pipeline_home, "select * from scores where producer is null")
    assert scores.height == gens.height
    assert scores.group_by("completion_id").len()["len"].max() == 1
    assert scores["reward"].is_finite().all()
    evals = q(pipeline_home, "select prompt_id from prompts where split = 'eval'")["prompt_id"].to_list()
    assert not set(evals) & set(gens["prompt_id"])


def test_selections_pairs_and_decontamination(pipeline_home):
    sel = q(pipeline_home, "select strategy, prompt_id, reward from selections")
    assert set(sel["strategy"]) == {"reward_routing", "fixed_routing", "random_routing", "single_teacher", "learned_routing"}
    # Prompt by prompt, the argmax over every eligible sample is at least any one strategy's pick
    # (means over each strategy's own prompts compare different prompt sets, and move by machine).
    best = sel.filter(pl.col("strategy") == "reward_routing").select("prompt_id", pl.col("reward").alias("best"))
    others = sel.filter(pl.col("strategy") != "reward_routing").join(best, on="prompt_id", how="left")
    assert others["best"].null_count() == 0  # whatever another strategy selected, reward routing did too
    assert (others["best"] >= others["reward"] - 1e-6).all()
    pairs = q(pipeline_home, "select * from preference_pairs")
    assert {"best_worst", "native_vs_translated", "online"} <= set(pairs["method"])
    bw = pairs.filter(pl.col("method") == "best_worst")
    assert (bw["chosen_reward"] > bw["rejected_reward"]).all()
    evals = set(q(pipeline_home, "select prompt_id from prompts where split = 'eval'")["prompt_id"])
    sft = q(pipeline_home, "select prompt_id from sft_data")
    assert sft.height > 0 and not evals & set(sft["prompt_id"]) and not evals & set(pairs["prompt_id"])


def test_checkpoints_and_win_rates(pipeline_home):
    from transformers import AutoModelForCausalLM

    ck = q(pipeline_home, "select * from checkpoints")
    stages = set(ck["stage"])
    assert {"base", "teacher", "reward_model", "sft", "dpo_offline", "dpo_online_1", "dpo_online_2", "dpo_online_3",
            "cluster", "merged"} <= stages
    merged = ck.filter(pl.col("stage") == "merged").row(0, named=True)
    assert len(merged["parents"]) == ck.filter(pl.col("stage") == "cluster").height
    assert not merged["path"].startswith("/")  # stored relative to the home, so the home can move
    model = AutoModelForCausalLM.from_pretrained(pipeline_home / merged["path"])
    assert model.num_parameters() > 0
    rates = q(pipeline_home, "select * from win_rates")
    assert set(rates["stage"]) == {s for s, _ in STAGES}
    overall = rates.filter(pl.col("language") == "all")
    assert ((overall["ci_low"] <= overall["win_rate"]) & (overall["win_rate"] <= overall["ci_high"])).all()
    assert (pipeline_home / "reports" / "step_by_step.png").stat().st_size > 5000
    # Head to head beside the baseline rows: offline DPO directly against arbitrage SFT.
    assert {"sft_single_teacher", "sft_arbitrage"} <= set(overall["opponent"])
    assert (pipeline_home / "reports" / "head_to_head.png").stat().st_size > 5000


def test_lineage_and_publishing(pipeline_home):
    import datasets

    from warehouse.lineage import trace
    from warehouse.store import Warehouse

    pair = q(pipeline_home, "select pair_id, prompt_id from preference_pairs where method = 'best_worst' limit 1").row(0)
    tree = trace(pair[0], Warehouse(pipeline_home))
    assert pair[0] in tree and pair[1] in tree and "score by" in tree and "completion" in tree
    published = pipeline_home / "published" / "preference_pairs"
    card = (published / "README.md").read_text()
    assert "configs:" in card
    lang = q(pipeline_home, "select language from preference_pairs where producer is null limit 1").item()
    ds = datasets.load_dataset(str(published), name=lang, split="train")
    assert ds.num_rows > 0 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    everything = datasets.load_dataset(str(published), split="train")  # the default config: every pair, online too
    assert everything.num_rows == q(pipeline_home, "select count(*) from preference_pairs").item()
    online = datasets.load_dataset(str(published), name="online_round_1", split="train")
    assert set(online["method"]) == {"online"} and set(online["round"]) == {1}
    lineage = q(pipeline_home, "select * from lineage where asset = 'sft_data'")
    assert json.loads(lineage["input_versions"][0])  # names the versions it read


def test_cli_lineage_status_and_publish(pipeline_home):
    from typer.testing import CliRunner

    from assets.cli import app

    runner = CliRunner()
    home = ["--home", str(pipeline_home)]
    pair_id = q(pipeline_home, "select pair_id from preference_pairs where method = 'native_vs_translated' limit 1").item()
    out = runner.invoke(app, ["lineage", pair_id, *home])
    assert out.exit_code == 0, out.output
    assert "+translate" in out.output and "prompt p_" in out.output
    ck = q(pipeline_home, "select checkpoint_id from checkpoints where stage = 'merged'").item()
    out = runner.invoke(app, ["lineage", ck, *home])
    assert out.exit_code == 0 and out.output.count("[cluster]") >= 3
    bad = runner.invoke(app, ["lineage", "zz_nothing", *home])
    assert bad.exit_code == 2
    out = runner.invoke(app, ["publish", "--config", "tiny", *home])
    assert out.exit_code == 0, out.output
    assert "preference_pairs:" in out.output
    no_token = runner.invoke(app, ["publish", "--config", "tiny", "--push-to-hub", "me/x", *home], env={"HF_TOKEN": ""})
    assert no_token.exit_code == 2 and "HF_TOKEN" in no_token.output


def test_a_rerun_without_a_side_output_leaves_none_of_its_old_rows(pipeline_home, tmp_path):
    """Rerunning preference_pairs for one language with native_vs_translated turned off replaces that
    language's translated rows (the side output) with none, as it replaces the pairs. Last in this
    module: it changes the home's config."""
    import yaml

    from assets.config import CONFIG_DIR
    from assets.run import materialize_selection

    lang = q(pipeline_home, "select language from generations where producer = 'native_vs_translated' limit 1").item()
    assert q(pipeline_home, f"select count(*) from preference_pairs where method = 'native_vs_translated' and language = '{lang}'").item() > 0
    best_worst = f"select pair_id from preference_pairs where method = 'best_worst' and language = '{lang}' order by 1"
    before = q(pipeline_home, best_worst)
    cfg = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    cfg.setdefault("pairs", {})["native_vs_translated"] = {"enabled": False}
    config = tmp_path / "no_translations.yaml"
    config.write_text(yaml.safe_dump(cfg))
    materialize_selection("preference_pairs", [lang], force=True, workers=1, config=str(config), home=str(pipeline_home))
    assert q(pipeline_home, f"select count(*) from generations where producer = 'native_vs_translated' and language = '{lang}'").item() == 0
    assert q(pipeline_home, f"select count(*) from preference_pairs where method = 'native_vs_translated' and language = '{lang}'").item() == 0
    assert q(pipeline_home, best_worst).equals(before)  # the rest of the partition as it was
