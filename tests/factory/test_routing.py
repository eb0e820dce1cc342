from __future__ import annotations

import json
import random
from collections import defaultdict

import polars as pl
import pytest

from factory.routing import STRATEGIES, RoutingConfig, best_mean_teacher, routing_stats, select, strategy_comparison
from warehouse.schemas import SELECTIONS

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


def test_parquet_files_give_the_same_result_as_the_frame(scored, tmp_path):
    # two files, several row groups each: row positions run on across files and row groups
    half = scored.height // 2
    scored.head(half).write_parquet(tmp_path / "part-0.parquet", row_group_size=2)
    scored.tail(scored.height - half).write_parquet(tmp_path / "part-1.parquet", row_group_size=3)
    for cfg in (RoutingConfig(), RoutingConfig(require_language_match=False, seed=3)):
        from_frame = select(scored, NON_LEARNED, cfg)
        from_files = select(str(tmp_path / "part-*.parquet"), NON_LEARNED, cfg)
        assert from_files[0].equals(from_frame[0]) and from_files[1].equals(from_frame[1])
    assert best_mean_teacher(str(tmp_path / "part-*.parquet")) == best_mean_teacher(scored)


def test_duplicate_rows_of_a_sample(make_scored):
    # two rows of west_european's sample 0 for de (e.g. two scorers): the smallest completion_id wins;
    # for ja both are ineligible and the reason is read from the first of them in the table
    rows = make_scored([("de", "west_european", 0, 1.0, True, "a"), ("ja", "west_european", 0, None, True, "b")])
    dup = pl.concat([
        rows,
        rows.with_columns(pl.col("completion_id") + "x", pl.lit(2.0).alias("reward"), pl.lit(False).alias("language_match")),
        rows.head(1).with_columns(pl.col("completion_id").str.replace("c_", "c_0"), pl.lit(3.0).alias("reward")),
    ])
    cfg = RoutingConfig(single_teacher="west_european")
    sel, q = select(dup, ["single_teacher"], cfg)
    assert sel["completion_id"].to_list() == [min(dup.filter(pl.col("language") == "de", pl.col("language_match"))["completion_id"])]
    assert q["reason"].to_list() == ["single_teacher: teacher west_european's sample 0 has no reward"]
    swapped = pl.concat([dup.slice(3, 1), dup.slice(0, 3), dup.slice(4)])  # ja's off-language row first
    assert swapped["language"].to_list()[:2] == ["ja", "de"] and swapped["language_match"][0] is False
    _, q = select(swapped, ["single_teacher"], cfg)
    assert q["reason"].to_list() == ["single_teacher: teacher west_european's sample 0 is not in the prompt's language"]


def test_sql_language_guard_agrees_with_the_polars_one():
    import duckdb

    from factory.routing import eligible, eligible_sql

    df = pl.DataFrame({
        "reward": [1.0, None, float("nan"), float("inf"), -float("inf"), 0.0, 2.0, 3.0],
        "language_match": [True, True, True, True, True, None, False, True],
    })
    for cfg in (RoutingConfig(), RoutingConfig(require_language_match=False)):
        expected = df.select(eligible(cfg))["reward"].to_list()
        got = [r[0] for r in duckdb.sql(f"SELECT {eligible_sql(cfg)} FROM df").fetchall()]
        assert got == expected


def test_seeded_index_is_md5_of_seed_and_key():
    import hashlib

    from factory.ids import seeded_index

    keys = pl.Series("prompt_id", ["p_1", "p_ü", 'p_"q"', "", "it's"])
    expected = [int.from_bytes(hashlib.md5(f"7:{k}".encode()).digest()[:8], "big") for k in keys]
    got = seeded_index(keys, 7)
    assert got.to_list() == expected and got.dtype == pl.UInt64 and got.name == "prompt_id"
    with pytest.raises(ValueError, match="null"):
        seeded_index(pl.Series([None, "p_1"]), 7)


def _reference(df: pl.DataFrame, strategy: str, cfg: RoutingConfig, pool: list[str], single: str) -> tuple[dict, dict]:
    """A row-by-row reading of the strategies' contract: {prompt_id: (completion_id, teacher, reward, margin)},
    {prompt_id: reason} (random_routing's pick is the stable MD5 index of the prompt)."""
    import hashlib
    import math

    def ok(r):
        finite = r["reward"] is not None and math.isfinite(r["reward"])
        return finite and (r["language_match"] is True or not cfg.require_language_match)

    by_prompt = defaultdict(list)
    for r in df.iter_rows(named=True):
        by_prompt[r["prompt_id"]].append(r)
    picked, missed = {}, {}
    for pid, rows in by_prompt.items():
        if strategy == "reward_routing":
            good = sorted((r for r in rows if ok(r)), key=lambda r: (-r["reward"], r["completion_id"]))
            if good:
                margin = good[0]["reward"] - (good[1]["reward"] if len(good) > 1 else good[0]["reward"])
                picked[pid] = (good[0]["completion_id"], good[0]["teacher"], good[0]["reward"], margin)
            else:
                missed[pid] = "no completion with a reward" + (" in the prompt's language" if cfg.require_language_match else "")
            continue
        if strategy == "fixed_routing":
            teacher = cfg.fixed_teachers.get(rows[0]["language"])
        elif strategy == "single_teacher":
            teacher = single
        else:
            h = int.from_bytes(hashlib.md5(f"{cfg.seed}:{pid}".encode()).digest()[:8], "big")
            teacher = pool[h % len(pool)]
        sample = [r for r in rows if r["teacher"] == teacher and r["sample_index"] == cfg.sample_index]
        good = sorted((r for r in sample if ok(r)), key=lambda r: r["completion_id"])
        if teacher is None:
            missed[pid] = "no teacher assigned to the prompt"
        elif good:
            picked[pid] = (good[0]["completion_id"], teacher, good[0]["reward"], 0.0)
        else:
            where = f"teacher {teacher}'s sample {cfg.sample_index}"
            first = sample[0] if sample else None
            if first is None:
                missed[pid] = f"{where} does not exist"
            elif first["reward"] is None or not math.isfinite(first["reward"]):
                missed[pid] = f"{where} has no reward"
            else:
                missed[pid] = f"{where} is not in the prompt's language"
    return picked, missed


@pytest.mark.parametrize("seed", range(6))
def test_strategies_match_a_row_by_row_reference(seed):
    rng = random.Random(seed)
    teachers = ["a", "b", "c"]
    rewards = [0.0, 1.0, -1.0, None, float("nan"), float("inf")]  # few values: ties are common
    rows = []
    for i in range(40):
        lang = rng.choice(["de", "ja", "xx"])
        for t in teachers:
            for k in range(rng.choice([0, 1, 2])):
                for _ in range(rng.choice([1, 1, 1, 2])):  # sometimes two rows of one sample
                    rows.append({"prompt_id": f"p{i:02d}", "language": lang, "completion_id": f"c{rng.getrandbits(24):06x}", "teacher": t,
                                 "sample_index": k, "reward": rng.choice(rewards) if rng.random() < 0.6 else rng.gauss(0, 1),
                                 "language_match": rng.choice([True, True, False, None])})
    df = pl.DataFrame(rows, schema_overrides={"sample_index": pl.Int32, "reward": pl.Float64})
    cfg = RoutingConfig(require_language_match=seed % 2 == 0, seed=seed, fixed_teachers={"de": "a", "ja": "zz"})
    sel, q = select(df, NON_LEARNED, cfg)
    single = best_mean_teacher(df)
    for s in NON_LEARNED:
        picked, missed = _reference(df, s, cfg, sorted(teachers), single)
        got = {r[0]: r[1:] for r in sel.filter(pl.col("strategy") == s).select("prompt_id", "completion_id", "teacher", "reward", "margin").iter_rows()}
        assert got == picked, s
        reasons = {k: v.split(": ", 1)[1] for k, v in q.filter(pl.col("reason").str.starts_with(s + ":")).select("row_key", "reason").iter_rows()}
        assert reasons == missed, s
    assert sel.sort("strategy", "prompt_id").equals(sel)  # by strategy, then prompt_id
