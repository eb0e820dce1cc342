from __future__ import annotations

import json

import polars as pl

from factory.decontam import DecontamConfig, char_ngrams, decontaminate, normalize
from factory.routing import pair_candidates, scored_frame

EVAL = [
    "What is the capital city of France and why is it famous?",
    "今日は東京の天気がとても良いです",
    "Hi",
]


def frame(texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"prompt_id": [f"p{i}" for i in range(len(texts))], "text": texts})


def test_exact_normalised_and_altered_variants_are_caught():
    df = frame(
        [
            EVAL[0],  # exact
            "  what is the CAPITAL city of france, and why is it famous  ",  # normalised
            "What is the capital city of France and why is it so well known?",  # lightly altered
            "今日は東京の天気がとても良いですね",  # CJK variant
            "Do you like to eat pizza on Sundays?",  # unrelated
            "Hi there, how are you?",  # contains the short eval prompt "Hi": too short for the overlap test
        ]
    )
    kept, q = decontaminate(df, EVAL)
    assert kept["prompt_id"].to_list() == ["p4", "p5"]
    reasons = dict(zip(q["row_key"], q["reason"], strict=True))
    assert reasons["p0"].startswith("contaminated: exact match of held-out prompt #0")
    assert reasons["p1"].startswith("contaminated: normalised match of held-out prompt #0")
    assert "n-gram overlap" in reasons["p2"] and "held-out prompt #0" in reasons["p2"]
    assert "held-out prompt #1" in reasons["p3"]
    assert json.loads(q.filter(pl.col("row_key") == "p0")["payload"][0])["text"] == EVAL[0]
    assert kept.height + q.height == df.height


def test_threshold_controls_the_overlap_test():
    df = frame(["What is the capital city of France and why is it so well known?"])
    kept, _ = decontaminate(df, EVAL, DecontamConfig(threshold=0.99))
    assert kept.height == 1


def test_normalize_and_ngrams():
    assert normalize("Ｈｅｌｌｏ,  World!") == "helloworld"
    assert char_ngrams("abcdef", DecontamConfig(ngram=5)) == {"abcde", "bcdef"}
    assert char_ngrams("東京天気", DecontamConfig()) == {"東京", "京天", "天気"}
    assert char_ngrams("hi", DecontamConfig()) == {"hi"}


# -- the same text under another language label ------------------------------------------------------

CROSS_LABEL = [  # (language, text, split): eval prompts in one language, the same text in training in another
    ("zh-Hans", "你吃醋", "eval"),
    ("zh-Hant", "你吃醋", "train"),
    ("zh-Hant", "今天天氣很好，我們去公園散步吧", "train"),
    ("de", "Hallo", "eval"),
    ("nl", "Hallo", "train"),
    ("nl", "Wat is je favoriete kleur?", "train"),
]


def _prompts(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    from factory.ids import prompt_id

    return pl.DataFrame({
        "prompt_id": [prompt_id(lang, text) for lang, text, _ in rows], "language": [r[0] for r in rows],
        "text": [r[1] for r in rows], "split": [r[2] for r in rows], "source": ["t"] * len(rows),
        "origin": ["native"] * len(rows), "references": [["ok"]] * len(rows), "run_id": ["r"] * len(rows),
    })


def _store_prompts(home, rows):
    from warehouse.store import Warehouse

    wh = Warehouse(home)
    df = _prompts(rows)
    for (lang,), part in df.group_by(["language"], maintain_order=True):
        wh.write_table("prompts", part, {"language": lang})
    return wh, df


def test_eval_prompts_of_every_language_reach_a_partitioned_asset(home):
    from types import SimpleNamespace

    from assets.common import all_eval_prompts, contamination_check

    wh, _ = _store_prompts(home, CROSS_LABEL)
    cfg = SimpleNamespace(arbitrage=SimpleNamespace(decontam=DecontamConfig()))
    for lang, planted in (("zh-Hant", "你吃醋"), ("nl", "Hallo")):
        partition = wh.read_table("prompts", {"language": lang})  # what the partitioned asset's input holds
        evals = all_eval_prompts(wh, partition)
        assert sorted(evals["language"]) == ["de", "zh-Hans"]
        texts = evals["text"].to_list()
        names = [f"{pid} [{lang}]" for pid, lang in zip(evals["prompt_id"], evals["language"], strict=True)]
        train = partition.filter(pl.col("split") == "train").select("prompt_id", "text")
        kept, q = decontaminate(train, texts, DecontamConfig(), eval_names=names)
        assert planted not in kept["text"].to_list() and kept.height == 1
        (reason,) = q["reason"].to_list()
        assert reason.startswith("contaminated: exact match of held-out prompt p_") and ("[zh-Hans]" in reason or "[de]" in reason)
        assert contamination_check("decontaminated", kept, partition, evals, cfg).passed
        unfiltered = contamination_check("decontaminated", train, partition, evals, cfg)
        assert not unfiltered.passed and unfiltered.metadata["contaminated_rows"].value == 1


def _rows(table: str, rows: list[dict]) -> pl.DataFrame:
    from warehouse import schemas

    df = pl.DataFrame(rows)
    return df.with_columns([pl.lit(None, t).alias(c) for c, t in schemas.TABLES[table].items() if c not in df.columns])


def test_preference_pairs_drop_a_cross_label_duplicate_and_the_blocking_check_passes(home, tmp_path):
    """Asset level: de's pairs partition sees nl's eval prompt, though its `prompts` input holds only de
    (nl is not even among the run's partitions: its eval prompt is in the warehouse all the same)."""
    import dagster as dg

    from assets.definitions import ALL_ASSETS
    from assets.io_manager import WarehouseIOManager
    from assets.resources import FactoryResource, ModelServers

    wh, prompts = _store_prompts(home, [("nl", "Hallo", "eval"), ("de", "Hallo", "train"),
                                        ("de", "Wie ist das Wetter heute in Berlin?", "train")])
    train = prompts.filter(pl.col("language") == "de")
    gens, scores, sel = [], [], []
    for pid in train["prompt_id"]:
        for i, reward in enumerate((2.0, -1.0)):
            cid = f"c_{pid}_{i}"
            gens.append({"completion_id": cid, "prompt_id": pid, "language": "de", "teacher": f"t{i}",
                         "sample_index": 0, "text": f"Antwort {i} ist gut", "n_tokens": 3, "finish_reason": "stop", "run_id": "r"})
            scores.append({"completion_id": cid, "prompt_id": pid, "language": "de", "teacher": f"t{i}",
                           "scorer": "arbiter", "reward": reward, "reward_z": reward, "language_match": True, "run_id": "r"})
        sel.append({"prompt_id": pid, "language": "de", "strategy": "reward_routing", "completion_id": f"c_{pid}_0",
                    "teacher": "t0", "reward": 2.0, "margin": 3.0, "run_id": "r"})
    part = {"language": "de"}
    wh.write_table("generations", _rows("generations", gens), part)
    wh.write_table("scores", _rows("scores", scores), part)
    wh.write_table("selections", _rows("selections", sel), part)
    # what the selections step writes beside the selections: each prompt's best and worst completion
    scored = scored_frame(_rows("scores", scores), _rows("generations", gens))
    wh.write_table("pair_candidates", pair_candidates(scored).with_columns(run_id=pl.lit("r")), part)
    for asset in ("embedded_pool", "arbiter"):
        wh.write_table("checkpoints", _rows("checkpoints", [{"checkpoint_id": f"ck_{asset}", "stage": asset}]),
                       {"producer": asset})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("languages: [en, es, de, ja, ru]\npairs: {native_vs_translated: {enabled: false}}\n")
    result = dg.materialize(
        ALL_ASSETS, selection=["preference_pairs", "native_vs_translated"], partition_key="de", raise_on_error=False,
        resources={"env": FactoryResource(home=str(home), config_path=str(cfg)), "servers": ModelServers(),
                   "warehouse": WarehouseIOManager(home=str(home))},
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["decontaminated"].passed
    pairs = wh.read_table("preference_pairs", {"language": "de"})
    kept_texts = prompts.join(pairs.select("prompt_id"), on="prompt_id")["text"].to_list()
    assert kept_texts == ["Wie ist das Wetter heute in Berlin?"]
    q = wh.sql("select reason from quarantine where asset = 'preference_pairs'")["reason"].to_list()
    assert any("Hallo" in r and "[nl]" in r for r in q)


def test_dev_prompts_are_held_out_too():
    """Training rows that match a dev prompt are removed like those that match an eval prompt, and
    the reason says which split; train prompts are never held-out prompts."""
    from factory.decontam import DecontamConfig, decontamination_gate, eval_prompts

    prompts = pl.DataFrame({
        "prompt_id": ["e1", "d1", "t1", "t2", "t3"],
        "language": ["en"] * 5,
        "text": ["What is your name?", "Do you like music?", "do you like MUSIC", "What is your name", "Tell me a joke"],
        "split": ["eval", "dev", "train", "train", "train"],
    })
    held = eval_prompts(None, prompts)
    assert sorted(held["prompt_id"]) == ["d1", "e1"]
    kept, hits = decontamination_gate(pl.DataFrame({"prompt_id": ["t1", "t2", "t3"]}), prompts, held, DecontamConfig())
    assert kept["prompt_id"].to_list() == ["t3"]
    reasons = dict(zip(hits["row_key"], hits["reason"], strict=True))
    assert "held-out prompt d1 [en, dev]" in reasons["t1"] and "held-out prompt e1 [en]" in reasons["t2"]
