from __future__ import annotations

import random

import polars as pl
import pytest

from factory.ids import prompt_id
from factory.learned_router import Router, RouterConfig, evaluate_router, router_split, train_router
from factory.routing import RoutingConfig, select

WORDS = {
    "de": ("west_european", "der die und ist nicht ich haben wie heute Wetter schön gut Hause".split()),
    "ru": ("east_european", "привет как дела что это я не ты погода сегодня дом хорошо".split()),
    "ja": ("east_asian", "こんにちは 元気 ですか 今日 天気 私 あなた 何 どう です 家 いい".split()),
}
TEACHERS = ("west_european", "east_european", "east_asian")


def synthetic(n_per_lang: int = 50, seed: int = 0):
    """Prompts whose winning teacher is their language's cluster teacher (plus noise)."""
    rng = random.Random(seed)
    texts, rows = {}, []
    for lang, (winner, words) in WORDS.items():
        for _ in range(n_per_lang):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))
            pid = prompt_id(lang, text + str(rng.random()))
            texts[pid] = text
            for t in TEACHERS:
                rows.append(
                    {"prompt_id": pid, "language": lang, "completion_id": f"c_{pid}_{t}", "teacher": t, "sample_index": 0, "text": t,
                     "reward": (1.0 if t == winner else -1.0) + rng.gauss(0, 0.3), "reward_z": 0.0, "language_match": True}
                )
    return texts, pl.DataFrame(rows, schema_overrides={"sample_index": pl.Int32})


@pytest.fixture(scope="module")
def trained():
    texts, scored = synthetic()
    winners, _ = select(scored, ["reward_routing"])
    cfg = RouterConfig(n_features=1024, epochs=150)
    return texts, scored, cfg, train_router(texts, winners, cfg)


def test_split_is_stable_and_near_fraction():
    cfg = RouterConfig(fit_fraction=0.5)
    ids = [f"p_{i}" for i in range(2000)]
    splits = [router_split(p, cfg) for p in ids]
    assert splits == [router_split(p, cfg) for p in ids]
    assert 0.45 < splits.count("fit") / len(ids) < 0.55


def test_router_learns_winner_and_recovers_reward_on_holdout(trained):
    texts, scored, cfg, router = trained
    report = evaluate_router(router, texts, scored, cfg)
    assert report["n_holdout"] > 40
    assert report["accuracy"] > 0.9
    assert report["mean_reward_router"] > report["mean_reward_random"]
    assert report["recovered"] > 0.8
    assert report["generations_saved"] == pytest.approx(2 / 3)


def test_router_trains_only_on_fit_split(trained):
    texts, scored, cfg, _ = trained
    winners, _ = select(scored, ["reward_routing"])
    holdout_only = winners.filter(pl.col("prompt_id").map_elements(lambda p: router_split(p, cfg), return_dtype=pl.String) == "holdout")
    with pytest.raises(ValueError, match="fit split"):
        train_router(texts, holdout_only, cfg)


def test_shuffled_labels_do_worse(trained):
    texts, scored, cfg, _ = trained
    winners, _ = select(scored, ["reward_routing"])
    shuffled = winners.with_columns(pl.col("teacher").shuffle(seed=0))
    bad = evaluate_router(train_router(texts, shuffled, cfg), texts, scored, cfg)
    good = evaluate_router(train_router(texts, winners, cfg), texts, scored, cfg)
    assert bad["recovered"] < good["recovered"]


def test_learned_routing_strategy_uses_router_and_save_load(trained, tmp_path):
    texts, scored, cfg, router = trained
    prompts = pl.DataFrame({"prompt_id": list(texts), "text": list(texts.values())})
    sel, q = select(scored, ["learned_routing"], RoutingConfig(), router=router, prompts=prompts)
    assert sel.height + q.height == scored["prompt_id"].n_unique()
    expected = dict(zip(prompts["prompt_id"], router.predict(prompts["text"].to_list()), strict=True))
    assert all(expected[p] == t for p, t in sel.select("prompt_id", "teacher").iter_rows())
    loaded = Router.load(router.save(tmp_path / "router.npz"))
    assert loaded.predict(prompts["text"].to_list()[:20]) == router.predict(prompts["text"].to_list()[:20])


def test_learned_routing_from_a_predictions_frame(trained):
    """The router's predictions as a column joined by prompt_id select what the router itself does; a prompt
    without a text (or a prediction) is quarantined once."""
    texts, scored, cfg, router = trained
    known = dict(list(texts.items())[:-5])
    prompts = pl.DataFrame({"prompt_id": list(known), "text": list(known.values())})
    with_router, q_router = select(scored, ["learned_routing"], RoutingConfig(), router=router, prompts=prompts)
    routes = prompts.select("prompt_id", pl.Series("teacher", router.predict(prompts["text"].to_list())))
    with_frame, q_frame = select(scored, ["learned_routing"], RoutingConfig(), router=routes)
    assert with_frame.equals(with_router)
    assert q_router["row_key"].is_unique().all() and q_router.height == 5 + (scored["prompt_id"].n_unique() - 5 - with_router.height)
    assert set(q_router.filter(pl.col("reason").str.ends_with("prompt text not found"))["row_key"]) == set(texts) - set(known)
    assert set(q_frame.filter(pl.col("reason").str.ends_with("no prediction for the prompt"))["row_key"]) == set(texts) - set(known)
