from __future__ import annotations

import json
import math

import polars as pl
import pytest

from factory.scoring.fidelity import FidelityConfig
from factory.scoring.score import score_generations, teacher_table
from factory.scoring.sequence_classifier import SequenceClassifierScorer
from warehouse.schemas import SCORES

EN = [
    "I would be glad to help you with that question today.",
    "Sure, here is a short and clear answer for you.",
    "Thanks for asking, the museum opens at nine.",
]
ES = "Con mucho gusto te ayudo con esa pregunta hoy mismo."
DE = "Ich helfe dir sehr gerne bei dieser Frage, mein Freund."

PROMPTS = pl.DataFrame(
    {"prompt_id": ["p_en", "p_es", "p_de"], "text": ["Can you help me?", "¿Me ayudas?", "Hilfst du mir?"]}
)


def _gen(rows):
    base = {"backend": "fake", "sampling": "{}", "n_tokens": 5, "seconds": 0.1, "run_id": "gen_run"}
    return pl.DataFrame(
        [
            {
                "completion_id": c,
                "prompt_id": p,
                "language": lang,
                "teacher": t,
                "sample_index": 0,
                "text": x,
                "finish_reason": f,
                **base,
            }
            for c, p, lang, t, x, f in rows
        ]
    )


GENERATIONS = _gen(
    [
        ("c1", "p_en", "en", "west", EN[0], "stop"),
        ("c2", "p_en", "en", "east", EN[1], "stop"),
        ("c3", "p_en", "en", "east", EN[2], "stop"),
        ("c4", "p_es", "es", "west", ES, "stop"),
        ("c5", "p_de", "de", "west", DE, "stop"),
        ("c6", "p_de", "de", "east", EN[0], "length"),  # wrong language
    ]
)


class LengthScorer:
    name = "length"

    def score(self, prompts, completions):
        return [float(len(c)) for c in completions]


class PickyScorer:
    """None for one completion, NaN for another: both must be quarantined, never scored."""

    name = "picky"

    def score(self, prompts, completions):
        return [None if c == EN[1] else math.nan if c == ES else 1.0 for c in completions]


def test_one_row_per_completion_per_scorer_with_contract_columns():
    scores, quarantine = score_generations(GENERATIONS, PROMPTS, [LengthScorer()], FidelityConfig(), "run1")
    assert quarantine.height == 0
    assert scores.height == GENERATIONS.height
    assert scores.columns[: len(SCORES)] == list(SCORES)
    assert dict(scores.schema) | dict(SCORES) == dict(scores.schema)  # dtypes follow the contract
    assert scores["run_id"].unique().to_list() == ["run1"]
    assert sorted(scores["completion_id"]) == sorted(GENERATIONS["completion_id"])
    row = scores.filter(pl.col("completion_id") == "c6").row(0, named=True)
    assert (row["detected_language"], row["language_match"], row["selectable"]) == ("en", False, False)
    assert scores.filter(pl.col("completion_id") != "c6")["language_match"].all()
    assert scores.filter(pl.col("completion_id") == "c1")["reward"].item() == len(EN[0])


def test_reward_z_is_standardised_within_language_and_zero_for_singletons():
    scores, _ = score_generations(GENERATIONS, PROMPTS, [LengthScorer()], FidelityConfig(), "run1")
    en = scores.filter(pl.col("language") == "en")
    assert en["reward_z"].mean() == pytest.approx(0.0, abs=1e-9)
    assert en["reward_z"].std(ddof=0) == pytest.approx(1.0)
    assert scores.filter(pl.col("language") == "es")["reward_z"].to_list() == [0.0]  # single completion
    same = _gen(
        [("a", "p_en", "en", "t", "same text here", "stop"), ("b", "p_en", "en", "u", "same text here", "stop")]
    )
    flat, _ = score_generations(same, PROMPTS, [LengthScorer()], FidelityConfig(), "r")
    assert flat["reward_z"].to_list() == [0.0, 0.0]  # zero variance


def test_none_and_nonfinite_rewards_are_quarantined_and_counts_reconcile():
    scorers = [LengthScorer(), PickyScorer()]
    scores, quarantine = score_generations(GENERATIONS, PROMPTS, scorers, FidelityConfig(), "run1")
    assert scores.height + quarantine.height == GENERATIONS.height * len(scorers)
    assert quarantine.columns == ["row_key", "reason", "payload"]
    reasons = dict(zip(quarantine["row_key"], quarantine["reason"], strict=True))
    assert set(reasons) == {"c2|picky", "c4|picky"}
    assert "no score" in reasons["c2|picky"] and "non-finite" in reasons["c4|picky"]
    assert json.loads(quarantine["payload"][0])["completion_id"] in {"c2", "c4"}
    picky = scores.filter(pl.col("scorer") == "picky")
    assert set(picky["completion_id"]) == {"c1", "c3", "c5", "c6"}
    assert scores.filter(pl.col("scorer") == "length").height == GENERATIONS.height


def test_unscorable_generations_are_quarantined():
    bad = pl.concat(
        [
            GENERATIONS,
            _gen(
                [
                    ("c1", "p_en", "en", "west", "dup", "stop"),
                    ("c7", "p_xx", "en", "w", "orphan", "stop"),
                    ("c8", "p_en", "en", "w", "", "error"),
                ]
            ),
        ]
    )
    scores, quarantine = score_generations(bad, PROMPTS, [LengthScorer()], FidelityConfig(), "r")
    assert scores.height == GENERATIONS.height
    assert sorted(quarantine["row_key"]) == ["c1|length", "c7|length", "c8|length"]
    assert scores.filter(pl.col("completion_id") == "c1")["reward"].item() == len(EN[0])  # first occurrence kept


def test_penalize_policy_lowers_reward_of_wrong_language():
    plain, _ = score_generations(GENERATIONS, PROMPTS, [LengthScorer()], FidelityConfig(policy="off"), "r")
    pen, _ = score_generations(
        GENERATIONS, PROMPTS, [LengthScorer()], FidelityConfig(policy="penalize", penalty=100.0), "r"
    )
    diff = plain.join(pen, on="completion_id").select("completion_id", d=pl.col("reward") - pl.col("reward_right"))
    assert dict(diff.iter_rows()) == {"c1": 0.0, "c2": 0.0, "c3": 0.0, "c4": 0.0, "c5": 0.0, "c6": 100.0}


def test_truncation_flag_comes_from_the_reward_model(tiny_rm):
    rm = SequenceClassifierScorer(tiny_rm, max_length=20, name="rm")
    scores, quarantine = score_generations(GENERATIONS, PROMPTS, [rm], FidelityConfig(), "r")
    assert quarantine.height == 0 and scores.height == GENERATIONS.height
    assert scores["truncated"].any() and scores["reward"].is_finite().all()


def test_teacher_table_aggregates_per_language_and_teacher():
    scores, _ = score_generations(GENERATIONS, PROMPTS, [LengthScorer()], FidelityConfig(), "r")
    table = teacher_table(scores)
    de_east = table.filter((pl.col("language") == "de") & (pl.col("teacher") == "east")).row(0, named=True)
    assert de_east["n"] == 1 and de_east["language_match_rate"] == 0.0
    en_east = table.filter((pl.col("language") == "en") & (pl.col("teacher") == "east")).row(0, named=True)
    assert en_east["n"] == 2
    assert en_east["mean_reward"] == pytest.approx((len(EN[1]) + len(EN[2])) / 2)
    assert table["n"].sum() == scores.height


class CountingLengthScorer(LengthScorer):
    """LengthScorer with an identity (so it is cached); counts the completions it is asked to score."""

    def __init__(self, version: int = 1, fail_after: int | None = None):
        self.identity = {"kind": "length", "version": version}
        self.seen: list[str] = []
        self.fail_after = fail_after

    def score(self, prompts, completions):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise RuntimeError("killed")
        self.seen.extend(completions)
        return super().score(prompts, completions)


def _drop_run(df):
    return df.drop("run_id").sort("completion_id", "scorer")


def test_cached_scores_resume_and_a_changed_scorer_scores_again(tmp_path):
    cache = tmp_path / "cache"
    first_scorer = CountingLengthScorer()
    first, _ = score_generations(GENERATIONS, PROMPTS, [first_scorer], FidelityConfig(), "r1", cache)
    assert len(first_scorer.seen) == GENERATIONS.height
    assert json.loads(first["scorer_model"][0]) == {"kind": "length", "version": 1}

    again_scorer = CountingLengthScorer()
    again, _ = score_generations(GENERATIONS, PROMPTS, [again_scorer], FidelityConfig(), "r2", cache)
    assert again_scorer.seen == []
    assert _drop_run(again).equals(_drop_run(first))

    new_scorer = CountingLengthScorer(version=2)
    score_generations(GENERATIONS, PROMPTS, [new_scorer], FidelityConfig(), "r3", cache)
    assert len(new_scorer.seen) == GENERATIONS.height

    edited = GENERATIONS.with_columns(
        text=pl.when(pl.col("completion_id") == "c3").then(pl.lit("A rewritten answer.")).otherwise("text")
    )
    edit_scorer = CountingLengthScorer()
    scores, _ = score_generations(edited, PROMPTS, [edit_scorer], FidelityConfig(), "r4", cache)
    assert edit_scorer.seen == ["A rewritten answer."]
    assert scores.filter(pl.col("completion_id") == "c3")["reward"].item() == len("A rewritten answer.")


def test_a_killed_scoring_run_keeps_the_chunks_it_finished(tmp_path, monkeypatch):
    import factory.scoring.score as score_module

    monkeypatch.setattr(score_module, "CACHE_CHUNK", 2)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed"):
        score_generations(GENERATIONS, PROMPTS, [CountingLengthScorer(fail_after=4)], FidelityConfig(), "r1", cache)
    rerun = CountingLengthScorer()
    scores, _ = score_generations(GENERATIONS, PROMPTS, [rerun], FidelityConfig(), "r2", cache)
    assert len(rerun.seen) == GENERATIONS.height - 4 and scores.height == GENERATIONS.height


def test_unscorable_rewards_and_scorers_without_identity_are_not_cached(tmp_path):
    cache = tmp_path / "cache"

    class CountingPicky(PickyScorer):
        identity = {"kind": "picky"}

        def __init__(self):
            self.seen = []

        def score(self, prompts, completions):
            self.seen.extend(completions)
            return super().score(prompts, completions)

    score_generations(GENERATIONS, PROMPTS, [CountingPicky(), LengthScorer()], FidelityConfig(), "r1", cache)
    picky = CountingPicky()
    scores, quarantine = score_generations(GENERATIONS, PROMPTS, [picky, LengthScorer()], FidelityConfig(), "r2", cache)
    assert sorted(picky.seen) == sorted([EN[1], ES])  # the None and NaN ones are asked again
    assert sorted(quarantine["row_key"]) == ["c2|picky", "c4|picky"]
    assert scores.filter(pl.col("scorer") == "length")["scorer_model"].is_null().all()
    assert scores.filter(pl.col("scorer") == "length").height == GENERATIONS.height


def test_a_changed_reward_model_checkpoint_is_scored_again(tmp_path, tiny_rm):
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.tiny import save_model

    folder = tmp_path / "arbiter"
    shutil.copytree(tiny_rm, folder)
    cache = tmp_path / "cache"

    def run(run_id):
        rm = SequenceClassifierScorer(folder, name="arbiter", device="cpu")
        seen = []
        inner = rm.score_with_info
        rm.score_with_info = lambda p, c: seen.extend(c) or inner(p, c)
        scores, quarantine = score_generations(GENERATIONS, PROMPTS, [rm], FidelityConfig(), run_id, cache)
        assert quarantine.height == 0
        return scores.sort("completion_id"), len(seen)

    first, n = run("r1")
    assert n == GENERATIONS.height
    again, n = run("r2")
    assert n == 0 and again["reward"].to_list() == first["reward"].to_list()

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.score.weight.mul_(-1.0)  # retrained Arbiter: same size, other weights
    save_model(model, AutoTokenizer.from_pretrained(folder), folder)
    changed, n = run("r3")
    assert n == GENERATIONS.height
    assert changed["scorer_model"][0] != first["scorer_model"][0]
    assert changed["reward"].to_list() != first["reward"].to_list()
