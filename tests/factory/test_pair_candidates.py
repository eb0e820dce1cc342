"""One pass for selections and best_worst: `select_with_candidates` and the pair candidates it writes
beside the selections give what `select` and `best_worst` give on their own; outputs come sorted by
prompt_id whatever order the scored rows come in."""

from __future__ import annotations

import random

import polars as pl
import pytest

from factory.pairs import best_worst, best_worst_pairs, candidate_status
from factory.routing import RoutingConfig, pair_candidates, select, select_with_candidates
from warehouse.schemas import PAIR_CANDIDATES

STRATEGIES = ["fixed_routing", "random_routing", "reward_routing", "single_teacher"]


def _random_scored(seed: int, n_prompts: int = 30) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Few reward values (ties), null/NaN/inf rewards, null language_match, two rows of one sample,
    identical texts; prompts in a shuffled order, so table order differs from prompt_id order."""
    rng = random.Random(seed)
    rows = []
    for i in rng.sample(range(n_prompts), n_prompts):
        lang = rng.choice(["de", "ja", "xx"])
        for t in rng.sample(["a", "b", "c"], 3):
            for k in range(rng.choice([0, 1, 2])):
                for _ in range(rng.choice([1, 1, 1, 2])):
                    reward = rng.choice([0.0, 1.0, -1.0, None, float("nan"), float("inf")]) if rng.random() < 0.5 else rng.gauss(0, 1)
                    rows.append({"prompt_id": f"p{i:02d}", "language": lang, "completion_id": f"c{rng.getrandbits(24):06x}", "teacher": t,
                                 "sample_index": k, "reward": reward, "language_match": rng.choice([True, True, False, None]),
                                 "text": rng.choice(["x", "y", " x ", "z"])})
    scored = pl.DataFrame(rows, schema_overrides={"sample_index": pl.Int32, "reward": pl.Float64})
    prompts = scored.select("prompt_id").unique().sort("prompt_id").with_columns(pl.format("q {}", "prompt_id").alias("text"))
    return scored, prompts.head(n_prompts - 2)  # two prompts without a text: dropped_no_prompt


@pytest.mark.parametrize("seed", range(2))
def test_one_pass_equals_select_and_best_worst(seed, tmp_path):
    scored, prompts = _random_scored(seed)
    cfg = RoutingConfig(require_language_match=seed % 2 == 0, seed=seed, fixed_teachers={"de": "a", "ja": "zz"})
    path = tmp_path / "scored.parquet"
    scored.write_parquet(path, row_group_size=7)  # many row groups: fetching crosses them
    sel, q = select(scored, STRATEGIES, cfg)
    pairs, stats = best_worst(scored, prompts, require_language_match=cfg.require_language_match)
    for source in (scored, path):
        sel1, q1, cand = select_with_candidates(source, STRATEGIES, cfg, pairs_require_language_match=cfg.require_language_match)
        assert sel1.equals(sel) and q1.equals(q)
        pairs1, stats1 = best_worst_pairs(cand, prompts)
        assert pairs1.equals(pairs) and stats1 == stats
    # the pairs' language rule differs from routing's: still the same pairs (the candidates take a second pass)
    other = not cfg.require_language_match
    _, _, cand = select_with_candidates(scored, STRATEGIES, cfg, pairs_require_language_match=other)
    (got, got_stats), (want, want_stats) = best_worst_pairs(cand, prompts), best_worst(scored, prompts, require_language_match=other)
    assert got.equals(want) and got_stats == want_stats


def test_outputs_are_sorted_by_prompt_id_whatever_the_row_order():
    scored, prompts = _random_scored(7, n_prompts=60)  # prompts in a shuffled order
    sel, _, cand = select_with_candidates(scored, STRATEGIES)
    has = set(cand.filter(pl.col("chosen_completion_id").is_not_null())["prompt_id"])
    assert cand["prompt_id"].to_list() == sorted(has) + sorted(set(cand["prompt_id"]) - has)  # those with a pair first
    for s in STRATEGIES:
        got = sel.filter(pl.col("strategy") == s)["prompt_id"].to_list()
        assert got == sorted(got)
    assert sel["strategy"].to_list() == sorted(sel["strategy"].to_list())  # by strategy, then prompt
    pairs, _ = best_worst_pairs(cand, prompts)
    assert pairs["prompt_id"].to_list() == sorted(pairs["prompt_id"])
    # the same rows in another order give the same outputs in the same order
    again = select_with_candidates(scored.sample(fraction=1.0, shuffle=True, seed=1), STRATEGIES)
    assert again[0].equals(sel) and again[2].equals(cand)


def test_candidates_hold_every_prompt_with_its_best_and_worst(make_scored):
    scored = make_scored([
        ("de", "a", 0, 3.0, True, "gut"), ("de", "b", 0, 5.0, False, "good"), ("de", "c", 0, 1.0, True, "schlecht"),
        ("ja", "a", 0, None, True, "x"), ("ja", "b", 0, 2.0, False, "y"),  # nothing eligible
    ])
    cand = pair_candidates(scored)
    assert list(cand.columns) == [c for c in PAIR_CANDIDATES if c != "run_id"]
    assert cand["prompt_id"].n_unique() == cand.height == scored["prompt_id"].n_unique()
    de = cand.filter(pl.col("language") == "de").row(0, named=True)
    assert (de["n_eligible"], de["chosen_reward"], de["rejected_reward"], de["chosen_teacher"], de["rejected_teacher"]) == (2, 3.0, 1.0, "a", "c")
    assert (de["chosen_text"], de["rejected_text"]) == ("gut", "schlecht")
    ja = cand.filter(pl.col("language") == "ja").row(0, named=True)
    assert ja["n_eligible"] == 0 and ja["chosen_completion_id"] is None and ja["rejected_completion_id"] is None
    assert candidate_status(cand)["status"].to_list() == ["kept", "single"]
    with pytest.raises(ValueError, match="lack columns: chosen_reward"):
        candidate_status(cand.drop("chosen_reward"))


def _text_buffer_bytes(column: pl.Series) -> int:
    """Bytes of the data buffers a string column keeps alive (polars' strings are views into them)."""
    arrow = column.to_arrow(compat_level=pl.CompatLevel.newest())
    return sum(b.size for b in arrow.buffers()[2:] if b is not None)


def test_candidates_from_parquet_do_not_hold_every_text(tmp_path, monkeypatch):
    """Fetching two texts per prompt from Parquet keeps only those texts, not the whole text column of
    each slice it read (a string gathered from a slice points into the slice's buffer)."""
    import factory.routing as routing

    n_prompts, teachers = 40, ["a", "b", "c", "d", "e"]
    scored = pl.DataFrame({
        "prompt_id": [f"p{i:03d}" for i in range(n_prompts) for _ in teachers],
        "language": "de",
        "completion_id": [f"c{i:03d}{t}" for i in range(n_prompts) for t in teachers],
        "teacher": teachers * n_prompts,
        "reward": [float(k) for _ in range(n_prompts) for k in range(len(teachers))],
        "language_match": True,
        "text": [f"{i:03d}{t} " + "lorem ipsum " * 40 for i in range(n_prompts) for t in teachers],  # distinct, 484 bytes
    })
    path = tmp_path / "scored.parquet"
    scored.write_parquet(path)
    whole = int(scored["text"].str.len_bytes().sum())
    held = {}
    for name, limit in (("kept whole", 1 << 40), ("copied out", routing._LONG_BYTES)):
        monkeypatch.setattr(routing, "_LONG_BYTES", limit)  # 1 << 40: every column read by slices
        cand = pair_candidates(path)
        assert cand["chosen_text"].to_list() == [f"{i:03d}e " + "lorem ipsum " * 40 for i in range(n_prompts)]
        assert cand["rejected_text"].to_list() == [f"{i:03d}a " + "lorem ipsum " * 40 for i in range(n_prompts)]
        held[name] = _text_buffer_bytes(cand["chosen_text"]) + _text_buffer_bytes(cand["rejected_text"])
    needed = 2 * whole // len(teachers)
    assert held["kept whole"] >= whole  # what the copy prevents: each side holds every text it read
    assert held["copied out"] <= 2 * needed
