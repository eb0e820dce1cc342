from __future__ import annotations

import hashlib
import json
import random

import polars as pl
import pytest

from factory.ids import pair_id
from factory.pairs import PAIR_BUILDERS, best_worst, check_pairs, pair_counts, pair_ids
from warehouse.schemas import PREFERENCE_PAIRS


def test_best_worst_pairs_in_language_best_vs_worst(scored, prompts):
    pairs, stats = best_worst(scored, prompts, run_id="r")
    assert list(pairs.columns[: len(PREFERENCE_PAIRS)]) == list(PREFERENCE_PAIRS)
    rows = {r["language"]: r for r in pairs.iter_rows(named=True)}
    de = rows["de"]  # the off-language 5.0 completion is not eligible
    assert (de["chosen_reward"], de["rejected_reward"], de["margin"]) == (3.0, 1.0, 2.0)
    assert de["chosen"] == [{"role": "assistant", "content": "Es ist heute sonnig."}]
    assert de["prompt"] == [{"role": "user", "content": "Wie ist das Wetter heute?"}]
    assert de["pair_id"] == pair_id(de["prompt_id"], "best_worst", 0, de["chosen_completion_id"], de["rejected_completion_id"])
    assert rows["ja"]["rejected_reward"] == -4.0
    assert stats == {"n_prompts": 3, "n_pairs": 2, "dropped_single": 1, "dropped_tie": 0, "dropped_identical": 0,
                     "dropped_margin": 0, "dropped_no_prompt": 0}
    assert check_pairs(pairs) == []


def test_ties_identical_and_margin_are_dropped_and_counted(prompts, make_scored):
    scored = make_scored(
        [
            ("de", "a", 0, 1.0, True, "x"), ("de", "b", 0, 1.0, True, "y"),  # tie
            ("ja", "a", 0, 2.0, True, "同じ"), ("ja", "b", 0, 1.0, True, " 同じ "),  # identical text
            ("ru", "a", 0, 1.2, True, "да"), ("ru", "b", 0, 1.0, True, "нет"),  # margin 0.2
        ]
    )
    pairs, stats = best_worst(scored, prompts, min_margin=0.5)
    assert pairs.is_empty()
    assert (stats["dropped_tie"], stats["dropped_identical"], stats["dropped_margin"]) == (1, 1, 1)
    pairs, stats = best_worst(scored, prompts, min_margin=0.1)
    assert stats["n_pairs"] == 1 and pairs["language"].to_list() == ["ru"]
    assert stats["n_prompts"] == sum(v for k, v in stats.items() if k.startswith("dropped_")) + stats["n_pairs"]


def test_online_round_method_and_ids(scored, prompts):
    online, _ = PAIR_BUILDERS["online"](scored, prompts, round=2)
    offline, _ = best_worst(scored, prompts)
    assert set(online["method"]) == {"online"} and set(online["round"]) == {2}
    assert set(online["pair_id"]).isdisjoint(offline["pair_id"])  # round and method are part of the id


def test_missing_prompt_text_is_counted(scored, prompts):
    pairs, stats = best_worst(scored, prompts.head(1))
    assert stats["dropped_no_prompt"] == 1 and pairs.height == 1


def _reference_pair_id(p: str, method: str, round: int, c: str, r: str) -> str:
    """The pair id's contract, independent of DuckDB: MD5 of the canonical JSON, 16 hex digits."""
    payload = json.dumps(["pair", p, method, round, c, r], ensure_ascii=False, separators=(",", ":"))
    return "pr_" + hashlib.md5(payload.encode()).hexdigest()[:16]


def test_pair_ids_equal_reference():
    rng = random.Random(0)
    p = [f"p_{rng.getrandbits(64):016x}" for _ in range(50)]
    c = [f"c_{rng.getrandbits(64):016x}" for _ in range(50)]
    r = [f"c_{rng.getrandbits(64):016x}" for _ in range(50)]
    got = pair_ids(pl.Series(p), "online", 3, pl.Series(c), pl.Series(r)).to_list()
    assert got == [_reference_pair_id(a, "online", 3, b, d) for a, b, d in zip(p, c, r, strict=True)]
    assert got[7] == pair_id(p[7], "online", 3, c[7], r[7])
    odd = ['p_"quoted"', "p_ü", "a\\b/\x01\n", "it's", "日本"]  # JSON escapes, quotes, non-ASCII
    m = "it's \"odd\""
    got = pair_ids(pl.Series(odd), m, 0, pl.Series(c[:5]), pl.Series(r[:5])).to_list()
    assert got == [_reference_pair_id(a, m, 0, b, d) for a, b, d in zip(odd, c[:5], r[:5], strict=True)]
    assert pair_ids(pl.Series([], dtype=pl.String), "online", 1, pl.Series([], dtype=pl.String), pl.Series([], dtype=pl.String)).len() == 0
    with pytest.raises(ValueError, match="null"):
        pair_ids(pl.Series([None]), "online", 1, pl.Series(["c"]), pl.Series(["r"]))


def test_check_pairs_flags_bad_rows(scored, prompts):
    pairs, _ = best_worst(scored, prompts)
    swapped = pairs.with_columns(pl.col("chosen_reward").alias("rejected_reward"), pl.col("rejected_reward").alias("chosen_reward"))
    problems = check_pairs(swapped)
    assert len(problems) == 1 and "chosen_reward > rejected_reward" in problems[0]
    same = pairs.with_columns(pl.col("chosen").alias("rejected"))
    assert any("identical" in p for p in check_pairs(same))
    assert any("duplicate" in p for p in check_pairs(pl.concat([pairs, pairs])))


def test_pair_counts_warns_below_minimum(scored, prompts):
    pairs, _ = best_worst(scored, prompts)
    counts, warnings = pair_counts(pairs, min_per_language=1, languages=["de", "ja", "ru"])
    assert dict(counts.select("language", "n_pairs").iter_rows()) == {"de": 1, "ja": 1}
    assert warnings == ["language ru: 0 pairs < minimum 1"]
    _, warnings = pair_counts(pairs, min_per_language=2)
    assert len(warnings) == 2


@pytest.mark.parametrize("lazy", [False, True])
def test_lazy_and_eager_agree(scored, prompts, lazy):
    pairs, stats = best_worst(scored.lazy() if lazy else scored, prompts)
    assert stats["n_pairs"] == 2 and pairs.height == 2


def test_ties_pick_the_best_first_order(make_scored, prompts):
    # best-first order is (reward high first, then completion_id): chosen is the smallest id among the
    # top rewards, rejected the last row, i.e. the largest id among the lowest rewards
    scored = make_scored([("de", t, k, r, True, t) for t, k, r in [("a", 0, 2.0), ("b", 0, 2.0), ("c", 0, -1.0), ("d", 0, -1.0), ("e", 1, 0.5)]])
    pairs, _ = best_worst(scored, prompts)
    tops = scored.filter(pl.col("reward") == 2.0)["completion_id"]
    bottoms = scored.filter(pl.col("reward") == -1.0)["completion_id"]
    assert pairs["chosen_completion_id"].to_list() == [tops.min()]
    assert pairs["rejected_completion_id"].to_list() == [bottoms.max()]


def test_parquet_files_give_the_same_pairs(scored, prompts, tmp_path):
    scored.write_parquet(tmp_path / "scored.parquet", row_group_size=2)
    from_frame = best_worst(scored, prompts, run_id="r")
    from_file = best_worst(tmp_path / "scored.parquet", prompts, run_id="r")
    assert from_file[0].equals(from_frame[0]) and from_file[1] == from_frame[1]
