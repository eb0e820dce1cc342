from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from factory.sources.chatterbot import Dialog
from training.reward_model import PAIR_KINDS, RewardModelConfig, degenerate_reply, make_reward_pairs, train_reward_model

EN = [
    ("Hi there", "Hello! How can I help you?"),
    ("What is your name", "I am a small chat bot."),
    ("Do you like music", "Yes, I love listening to music."),
    ("Where do you live", "I live inside a computer."),
    ("Are you happy", "I am very happy today, thanks."),
    ("Tell me a joke", "Why did the chicken cross the road?"),
]
ES = [
    ("Hola", "¡Hola! ¿En qué puedo ayudarte?"),
    ("Cómo te llamas", "Soy un pequeño robot de charla."),
    ("Te gusta la música", "Sí, me encanta escuchar música."),
    ("Dónde vives", "Vivo dentro de un ordenador."),
    ("Estás feliz", "Estoy muy feliz hoy, gracias."),
    ("Cuéntame un chiste", "¿Por qué cruzó el pollo la calle?"),
]
RU = [
    ("Привет", "Привет! Чем я могу помочь?"),
    ("Как тебя зовут", "Я маленький чат-бот."),
    ("Ты любишь музыку", "Да, я люблю слушать музыку."),
    ("Где ты живешь", "Я живу внутри компьютера."),
    ("Ты счастлив", "Я сегодня очень счастлив, спасибо."),
    ("Расскажи шутку", "Почему курица перешла дорогу?"),
]


def dialogs() -> list[Dialog]:
    out = []
    for lang, rows in (("en", EN), ("es", ES), ("ru", RU)):
        out += [Dialog(lang, p, [r], f"test:{lang}#{i}") for i, (p, r) in enumerate(rows)]
    out.append(Dialog("en", "no reply here", [], "test:en#x"))  # unusable: no reference
    return out


def test_pairs_are_balanced_well_formed_and_deterministic():
    ds = dialogs()
    pairs = make_reward_pairs(ds, seed=1, heldout_fraction=0.3)
    assert pairs.height == 3 * 18
    assert pairs.group_by("kind").len()["len"].to_list() == [18, 18, 18]
    refs = {(d.language, d.prompt): d.references for d in ds}
    lang_of_reply = {r: d.language for d in ds for r in d.references}
    for row in pairs.iter_rows(named=True):
        prompt, chosen, rejected = (
            row["prompt"][0]["content"],
            row["chosen"][0]["content"],
            row["rejected"][0]["content"],
        )
        assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert chosen in refs[(row["language"], prompt)] and rejected != chosen
        if row["kind"] == "other_language":
            assert lang_of_reply[rejected] != row["language"]
        elif row["kind"] == "other_prompt":
            assert lang_of_reply[rejected] == row["language"]
            assert rejected not in refs[(row["language"], prompt)]
        else:
            assert rejected not in lang_of_reply
    # a prompt's pairs share one split; same inputs, same pairs
    assert pairs.group_by("prompt").agg(pl.col("split").n_unique())["split"].max() == 1
    assert set(pairs["split"]) == {"train", "heldout"}
    assert make_reward_pairs(ds, seed=1, heldout_fraction=0.3).equals(pairs)
    assert not make_reward_pairs(ds, seed=2, heldout_fraction=0.3).equals(pairs)


def test_degenerate_replies_differ_from_the_original():
    import random

    rng = random.Random(0)
    for text in ["I am very happy today, thanks.", "哈哈哈", "ok", "人工智能是工程和科学的分支"]:
        for _ in range(10):
            assert degenerate_reply(text, rng) != text


@pytest.fixture
def base_dir(tiny_lm) -> Path:
    return tiny_lm([t for rows in (EN, ES, RU) for pair in rows for t in pair], vocab_size=400)


def test_train_reward_model_saves_a_scorable_model_and_reports_heldout_accuracy(base_dir, tmp_path):
    from factory.scoring.sequence_classifier import SequenceClassifierScorer

    pairs = make_reward_pairs(dialogs(), heldout_fraction=0.3)
    cfg = RewardModelConfig(max_steps=25, batch_size=8, lr=3e-3, max_length=64)
    out = tmp_path / "arbiter"
    metrics = train_reward_model(base_dir, pairs, out, cfg)

    assert metrics["steps"] == 25
    assert metrics["n_train"] == pairs.filter(pl.col("split") == "train").height
    assert metrics["n_heldout"] == pairs.filter(pl.col("split") == "heldout").height
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["accuracy_by_kind"]) == set(PAIR_KINDS)
    assert metrics["seconds"] > 0
    assert (out / "config.json").exists() and not (out.parent / "arbiter.tmp").exists()
    assert not (out.parent / "arbiter.trainer").exists()

    # the saved Arbiter learnt the training pairs: chosen outscores rejected on most of them
    train = pairs.filter(pl.col("split") == "train")
    rm = SequenceClassifierScorer(out, max_length=64)
    chosen = rm.score(train["prompt"].to_list(), [m[0]["content"] for m in train["chosen"].to_list()])
    rejected = rm.score(train["prompt"].to_list(), [m[0]["content"] for m in train["rejected"].to_list()])
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) / train.height > 0.7
    assert sum(metrics["n_by_kind"].values()) == metrics["n_heldout"]

    # the same base, config and pairs: the finished model is reused, its metrics as they were
    again = train_reward_model(base_dir, pairs, out, cfg)
    assert again["reused"] and again["accuracy"] == metrics["accuracy"] and again["config_hash"] == metrics["config_hash"]


def test_kinds_at_chance_flags_a_coin_flip_not_a_learned_kind():
    from training.reward_model import kinds_at_chance

    metrics = {"accuracy_by_kind": {"other_language": 0.77, "other_prompt": 0.51, "degenerate": 0.62},
               "n_by_kind": {"other_language": 131, "other_prompt": 131, "degenerate": 10}}
    flagged = kinds_at_chance(metrics)
    assert set(flagged) == {"other_prompt", "degenerate"}  # 0.62 on 10 pairs is not distinguishable from 0.5
    assert "131 held-out pairs" in flagged["other_prompt"]
    assert kinds_at_chance({"accuracy_by_kind": {"x": 0.9}, "n_by_kind": {"x": 200}}) == {}


def test_pmi_relevance_is_fitted_on_train_pairs_saved_with_the_arbiter_and_used_when_scoring(base_dir, tmp_path):
    import json

    from factory.scoring.relevance import Relevance
    from factory.scoring.sequence_classifier import SequenceClassifierScorer
    from training.reward_model import heldout_accuracy

    pairs = make_reward_pairs(dialogs(), heldout_fraction=0.3)
    cfg = RewardModelConfig(max_steps=10, batch_size=8, lr=3e-3, max_length=64)
    out = tmp_path / "arbiter"
    metrics = train_reward_model(base_dir, pairs, out, cfg, relevance="pmi", relevance_max_length=64)

    saved = Relevance.load(out)
    assert saved is not None and saved.weights == metrics["relevance"]["weights"]
    assert saved.weights["classifier"] == 1.0 and np.isfinite(saved.weights["pmi"])
    assert saved.fitted_on["pairs"] == pairs.filter(pl.col("split") == "train").height  # train pairs only
    assert (out / "relevance_lm" / "config.json").exists()
    assert "relevance.json" in json.loads((out / "outputs.json").read_text())  # covered by the reuse check
    # the reward the scores asset computes is the one measured on the held-out pairs
    heldout = pairs.filter(pl.col("split") == "heldout")
    again = heldout_accuracy(out, heldout, 64)
    assert again["accuracy_by_kind"] == metrics["accuracy_by_kind"]
    assert set(metrics["components"]) == {"classifier", "pmi"}
    scorer = SequenceClassifierScorer(out, max_length=64)
    prompts, replies = heldout["prompt"].to_list(), [m[0]["content"] for m in heldout["chosen"].to_list()]
    features, _ = scorer.features(prompts, replies)
    expected = [c + saved.weights["pmi"] * p for c, p in zip(features["classifier"], features["pmi"], strict=True)]
    assert scorer.score(prompts, replies) == pytest.approx(expected, abs=1e-5)

    assert train_reward_model(base_dir, pairs, out, cfg, relevance="pmi", relevance_max_length=64)["reused"]
    with pytest.raises(ValueError, match="no config.json"):
        train_reward_model(tmp_path / "nowhere", pairs, tmp_path / "other", cfg, relevance="pmi")
