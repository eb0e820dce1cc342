"""The online rounds' language guard: a wrong-language answer is never chosen, and is the natural
rejected when the Arbiter ranks it first; `rule` says which rule made each pair."""

from __future__ import annotations

import polars as pl

from factory.pairs import PAIR_BUILDERS, best_worst, check_pairs, language_guarded_pairs
from warehouse.schemas import PREFERENCE_PAIRS, conform


def test_wrong_language_top_answer_is_rejected_never_chosen(scored, prompts):
    pairs, stats = language_guarded_pairs(scored, prompts, round=1, run_id="r")
    assert list(pairs.columns[: len(PREFERENCE_PAIRS)]) == list(PREFERENCE_PAIRS)
    rows = {r["language"]: r for r in pairs.iter_rows(named=True)}
    de = rows["de"]  # the Arbiter's favourite (5.0) is Russian: it is rejected against the best German answer
    assert (de["rule"], de["chosen_reward"], de["rejected_reward"], de["margin"]) == ("language", 3.0, 5.0, -2.0)
    assert de["rejected"] == [{"role": "assistant", "content": "Солнечно."}]
    assert (de["chosen_language_match"], de["rejected_language_match"]) == (True, False)
    assert rows["ja"]["rule"] == "reward" and rows["ja"]["rejected_reward"] == -4.0  # no wrong-language answer
    assert "ru" not in rows  # the only right-language answer has no reward: nothing to choose
    assert pairs.filter(pl.col("rule") == "language")["chosen_language_match"].all()
    assert stats["by_rule"] == {"reward": 1, "language": 1} and stats["language_over_reward"] == 1
    assert stats["n_pairs"] == pairs.height == 2
    assert check_pairs(pairs) == []
    assert PAIR_BUILDERS["online"].func is language_guarded_pairs


def test_reward_rule_when_the_top_answer_is_in_language(make_scored, prompts):
    scored = make_scored([
        ("de", "a", 0, 4.0, True, "Sonnig."), ("de", "b", 0, 3.0, False, "Sunny."), ("de", "c", 0, 1.0, True, "Gut."),
        ("ja", "a", 0, 2.0, False, "Sunny."), ("ja", "b", 0, 1.0, True, "晴れ"),  # one right-language answer only
    ])
    pairs, _ = language_guarded_pairs(scored, prompts, round=2)
    rows = {r["language"]: r for r in pairs.iter_rows(named=True)}
    assert rows["de"]["rule"] == "reward" and rows["de"]["rejected"][0]["content"] == "Gut."  # not the English one
    assert rows["ja"]["rule"] == "language" and rows["ja"]["chosen"][0]["content"] == "晴れ"
    every_chosen = set(pairs["chosen_completion_id"])
    wrong = set(scored.filter(~pl.col("language_match"))["completion_id"])
    assert every_chosen.isdisjoint(wrong)


def test_offline_pairs_get_a_default_rule(scored, prompts):
    offline, _ = best_worst(scored, prompts)
    assert set(offline["rule"]) == {"reward"}  # conform fills the column best_worst does not set
    nvt = offline.drop("rule").with_columns(pl.lit("native_vs_translated").alias("method"))
    assert set(conform(nvt, PREFERENCE_PAIRS)["rule"]) == {"translation"}


def test_check_pairs_by_rule(scored, prompts):
    pairs, _ = language_guarded_pairs(scored, prompts, round=1)
    lang = pl.col("rule") == "language"
    # a language pair need not have chosen_reward > rejected_reward, a reward pair must
    as_reward = pairs.with_columns(pl.when(lang).then(pl.lit("reward")).otherwise("rule").alias("rule"))
    assert any("chosen_reward > rejected_reward" in p for p in check_pairs(as_reward))
    flipped = pairs.with_columns(pl.when(lang).then(pl.lit(True)).otherwise("rejected_language_match").alias("rejected_language_match"))
    assert any("language-rule pairs whose chosen" in p for p in check_pairs(flipped))
    assert any("without chosen_language_match" in p for p in check_pairs(pairs.drop("chosen_language_match")))
    assert any("unknown pair rule" in p for p in check_pairs(pairs.with_columns(pl.lit("vibes").alias("rule"))))
    assert check_pairs(pairs.drop("rule").filter(~pl.col("margin").lt(0))) == []  # no rule column: the default


def test_a_non_finite_reward_never_makes_a_language_pair(make_scored, prompts):
    """NaN sorts above every number: a wrong-language answer with a NaN (or inf) reward must not
    replace the right-language reward pair, as best_worst's own eligibility rule (finite) says."""
    scored = make_scored([
        ("de", "a", 0, 3.0, True, "Sonnig."), ("de", "b", 0, 2.0, True, "Gut."), ("de", "c", 0, float("nan"), False, "Sunny."),
        ("ja", "a", 0, 3.0, True, "晴れ"), ("ja", "b", 0, 1.0, True, "雨"), ("ja", "c", 0, float("inf"), False, "Rainy."),
    ])
    pairs, stats = language_guarded_pairs(scored, prompts, round=1)
    assert set(pairs["rule"]) == {"reward"} and stats["by_rule"]["language"] == 0
    assert sorted(pairs["rejected_reward"].to_list()) == [1.0, 2.0]
