from __future__ import annotations

import json

import polars as pl

from factory.decontam import DecontamConfig, char_ngrams, decontaminate, normalize

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
    assert reasons["p0"].startswith("contaminated: exact match of eval prompt #0")
    assert reasons["p1"].startswith("contaminated: normalised match of eval prompt #0")
    assert "n-gram overlap" in reasons["p2"] and "eval prompt #0" in reasons["p2"]
    assert "eval prompt #1" in reasons["p3"]
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
