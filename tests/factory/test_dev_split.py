"""The dev split: taken from train prompts per language, disjoint from eval, with a floor, deterministic,
and eval is the same with or without it."""

from __future__ import annotations

import pytest

from factory import ids
from factory.prompts import PromptsConfig, RawPrompt, _dev_bucket, assign_splits, build_prompts


def _pids(lang: str, n: int) -> list[str]:
    return [ids.prompt_id(lang, f"prompt number {i}") for i in range(n)]


def test_dev_is_disjoint_from_eval_and_eval_does_not_move():
    pids = _pids("en", 80)
    cfg = PromptsConfig(eval_fraction=0.1, eval_min=10, dev_fraction=0.05, dev_min=6, dev_max_share=0.1)
    splits = assign_splits(pids, cfg)
    without = assign_splits(pids, PromptsConfig(eval_fraction=0.1, eval_min=10, dev_fraction=0.0, dev_min=0))
    assert set(splits.values()) == {"train", "dev", "eval"} and set(without.values()) == {"train", "eval"}
    assert {p for p, s in splits.items() if s == "eval"} == {p for p, s in without.items() if s == "eval"}
    dev = {p for p, s in splits.items() if s == "dev"}
    assert dev and all(without[p] == "train" for p in dev)  # dev only ever takes train prompts
    assert len(dev) >= 6
    assert all(splits[p] == "dev" for p in pids if without[p] == "train" and _dev_bucket(p) < 500)  # the hash ones
    assert assign_splits(list(reversed(pids)), cfg) == splits  # deterministic, whatever the order
    assert assign_splits(pids, cfg) == splits


@pytest.mark.parametrize(("n", "expected"), [(80, 6), (30, 3), (11, 1), (5, 0)])
def test_dev_floor_never_starves_a_small_language(n, expected):
    cfg = PromptsConfig(eval_fraction=0.0, eval_min=0, dev_fraction=0.0, dev_min=6, dev_max_share=0.1)
    splits = assign_splits(_pids("hi", n), cfg)
    assert sum(s == "dev" for s in splits.values()) == expected  # min(dev_min, int(dev_max_share * n))
    assert sum(s == "train" for s in splits.values()) == n - expected


def test_every_language_gets_dev_prompts_and_counts_add_up():
    rows = [RawPrompt("de", f"Wie geht es dir heute, Nummer {i}?", ["Gut."], f"k{i}", f"k{i}") for i in range(40)]
    batch = build_prompts(rows, "de", PromptsConfig(), "r", ["de"])
    c = batch.counts
    assert c["dev"] >= 4 and c["eval"] >= 8 and c["train"] + c["dev"] + c["eval"] == c["kept"] == 40
    assert set(batch.prompts["split"]) == {"train", "dev", "eval"}


def test_eval_and_dev_cannot_take_every_prompt():
    with pytest.raises(ValueError, match="some prompts are left to train on"):
        PromptsConfig(eval_max_share=0.6, dev_max_share=0.5)
