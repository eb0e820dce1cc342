from __future__ import annotations

import json
import random
from collections import defaultdict

import polars as pl
import pytest

from factory.routing import STRATEGIES, RoutingConfig, best_mean_teacher, routing_stats, select, strategy_comparison
from factory.schemas import SELECTIONS

NON_LEARNED = ["reward_routing", "fixed_routing", "random_routing", "single_teacher"]


def by_lang(sel: pl.DataFrame, strategy: str) -> dict[str, dict]:
    return {r["language"]: r for r in sel.filter(pl.col("strategy") == strategy).iter_rows(named=True)}


def test_reward_routing_picks_best_in_language_with_margin(scored):
    sel, q = select(scored, ["reward_routing"], RoutingConfig(), run_id="r1")
    assert list(sel.columns[: len(SELECTIONS)]) == list(SELECTIONS)
    rows = by_lang(sel, "reward_routing")
    # the off-language 5.0 completion is excluded; best in-language is west_european sample 1
    de = rows["de"]
    assert (de["teacher"], de["reward"], de["margin"]) == ("west_european", 3.0, 1.0)
    assert de["completion_id"] == scored.filter(pl.col("reward") == 3.0)["completion_id"][0]
    # ties are broken by the smallest completion_id, margin 0
    ja_tied = scored.filter((pl.col("language") == "ja") & (pl.col("reward") == 1.0))["completion_id"].sort()
    assert rows["ja"]["completion_id"] == ja_tied[0] and rows["ja"]["margin"] == 0.0
    assert set(sel["run_id"]) == {"r1"}
    # ru has no scored in-language completion: quarantined with the reason, not silently dropped
    assert "ru" not in rows and q.height == 1
    assert "no completion with a reward in the prompt's language" in q["reason"][0]
    assert json.loads(q["payload"][0])["n_completions"] == 2


def test_reward_routing_without_language_filter(scored):
    sel, q = select(scored, ["reward_routing"], RoutingConfig(require_language_match=False))
    rows = by_lang(sel, "reward_routing")
    assert (rows["de"]["teacher"], rows["de"]["margin"]) == ("east_european", 2.0)
    assert rows["ru"]["reward"] == 0.5 and q.is_empty()


def test_fixed_routing_default_is_cluster_teacher_sample_0(scored):
    sel, q = select(scored, ["fixed_routing"])
    rows = by_lang(sel, "fixed_routing")
    assert rows["de"]["teacher"] == "west_european" and rows["de"]["reward"] == 2.0  # sample 0, not the better sample 1
    assert rows["ja"]["teacher"] == "east_asian"
    assert set(sel["margin"]) == {0.0}
    assert q["reason"].to_list() == ["fixed_routing: teacher east_european's sample 0 is not in the prompt's language"]


def test_fixed_routing_custom_table_quarantines_unmapped(scored):
    sel, q = select(scored, ["fixed_routing"], RoutingConfig(fixed_teachers={"de": "east_asian"}))
    assert by_lang(sel, "fixed_routing")["de"]["teacher"] == "east_asian"
    assert sorted(q["reason"]) == ["fixed_routing: no teacher assigned to the prompt"] * 2


def test_single_teacher_is_best_macro_mean(scored):
    sums = defaultdict(list)
    for r in scored.drop_nulls("reward").iter_rows(named=True):
        sums[(r["teacher"], r["language"])].append(r["reward"])
    per_teacher = defaultdict(list)
    for (t, _), v in sums.items():
        per_teacher[t].append(sum(v) / len(v))
    expected = max(per_teacher, key=lambda t: sum(per_teacher[t]) / len(per_teacher[t]))
    assert best_mean_teacher(scored) == expected
    sel, q = select(scored, ["single_teacher"])
    assert set(sel["teacher"]) == {expected}
    assert q["reason"].to_list() == [f"single_teacher: teacher {expected}'s sample 0 has no reward"]
    sel2, _ = select(scored, ["single_teacher"], RoutingConfig(single_teacher="east_asian"))
    assert set(sel2["teacher"]) == {"east_asian"}


def _many_prompts(n: int = 60, teachers=("a", "b", "c")) -> pl.DataFrame:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        for t in teachers:
            for k in range(2):
                rows.append(
                    {"prompt_id": f"p{i:03d}", "language": "en", "completion_id": f"c{i:03d}{t}{k}", "teacher": t, "sample_index": k,
                     "text": f"{t}{k}", "reward": rng.gauss(0, 1), "reward_z": 0.0, "language_match": True}
                )
    return pl.DataFrame(rows, schema_overrides={"sample_index": pl.Int32})


def test_random_routing_is_seeded_and_uses_sample_0():
    df = _many_prompts()
    a, _ = select(df, ["random_routing"], RoutingConfig(seed=1))
    b, _ = select(df.sample(fraction=1.0, shuffle=True, seed=3), ["random_routing"], RoutingConfig(seed=1))
    c, _ = select(df, ["random_routing"], RoutingConfig(seed=2))
    assert a.equals(b)  # a function of seed + prompt_id, not row order
    assert not a["teacher"].equals(c["teacher"])
    assert set(a["teacher"]) == {"a", "b", "c"}
    assert a["completion_id"].str.ends_with("0").all()


def test_every_prompt_is_selected_or_quarantined_per_strategy(scored):
    sel, q = select(scored, NON_LEARNED)
    n_prompts = scored["prompt_id"].n_unique()
    for s in NON_LEARNED:
        n_q = q.filter(pl.col("reason").str.starts_with(s + ":")).height
        assert sel.filter(pl.col("strategy") == s).height + n_q == n_prompts, s
    # selected completions are real rows of the scored table with its reward
    joined = sel.join(scored, on="completion_id", how="left")
    assert joined["reward_right"].equals(joined["reward"].alias("reward_right"))


def test_lazy_input_gives_same_result(scored):
    eager, _ = select(scored, NON_LEARNED)
    lazy, _ = select(scored.lazy(), NON_LEARNED)
    assert eager.equals(lazy)


def test_routing_stats_and_summary():
    sel, _ = select(_many_prompts(), ["reward_routing", "random_routing"])
    stats = routing_stats(sel)
    assert stats["wins"].sum() == 60
    assert stats.group_by("language").agg(pl.col("share").sum())["share"].to_list() == pytest.approx([1.0])
    summary = strategy_comparison(sel).sort("strategy")
    assert summary["n_shared"].to_list() == [summary["n_shared"][0]] * 2  # both on the same prompts
    assert summary["n_shared"][0] <= summary["n_selected"].min()
    rand, best = summary["mean_reward"].to_list()
    assert best > rand  # argmax of all samples beats one random sample


def test_comparison_uses_only_prompts_every_strategy_selected():
    # random routing picks a low reward on p1 only; reward routing alone selected p2 with a low reward
    sel = pl.DataFrame({
        "strategy": ["reward_routing", "reward_routing", "random_routing"],
        "prompt_id": ["p1", "p2", "p1"], "language": ["es"] * 3, "reward": [0.9, -5.0, 0.5],
    })
    cmp = strategy_comparison(sel)
    assert cmp["strategy"].to_list() == ["reward_routing", "random_routing"]
    assert cmp["n_selected"].to_list() == [2, 1] and cmp["n_shared"].to_list() == [1, 1]
    assert cmp["mean_reward"].to_list() == pytest.approx([0.9, 0.5])  # own-prompt means would invert this


def test_unknown_strategy_and_missing_columns(scored):
    with pytest.raises(ValueError, match="unknown routing"):
        select(scored, ["nope"])
    with pytest.raises(ValueError, match="language_match"):
        select(scored.drop("language_match"), ["reward_routing"])
    with pytest.raises(ValueError, match="router"):
        select(scored, ["learned_routing"])
    assert set(STRATEGIES) == {*NON_LEARNED, "learned_routing"}
