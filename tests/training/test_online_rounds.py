"""The online rounds' dev decisions, on hand-made dev verdicts: figures, the stop rule, the beta pick,
and how a stop carries to later rounds."""

from __future__ import annotations

import polars as pl
import pytest

from factory.judges import ReferenceJudge
from factory.judges.reference import ReferenceJudgeConfig
from training.online import (
    CONTINUE,
    NO_DEV,
    STOP,
    OnlineConfig,
    dev_decision,
    dev_figures,
    judge_on_dev,
    pick_candidate,
    round_record,
    stopped_at,
)

SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def verdicts(*per_language: tuple[str, str]) -> pl.DataFrame:
    """Judgments rows from (language, "wwtl...") strings: w win, t tie, l loss."""
    word = {"w": "win", "t": "tie", "l": "loss"}
    rows = [
        {"judgment_id": f"j{lang}{i}", "prompt_id": f"p_{lang}{i}", "language": lang, "judge": "reference", "model": "new",
         "baseline": "old", "stage": "dev_dpo_online_1", "verdict": word[c], "score": SCORE[word[c]]}
        for lang, letters in per_language for i, c in enumerate(letters)
    ]
    return pl.DataFrame(rows)


def test_dev_figures_pool_every_prompt_and_report_the_macro_average():
    figures = dev_figures(verdicts(("de", "wwwt"), ("ja", "l")))
    assert (figures["n"], figures["wins"], figures["ties"], figures["losses"]) == (5, 3, 1, 1)
    assert figures["win_rate"] == pytest.approx(3.5 / 5)  # pooled: each dev prompt weighs the same
    assert figures["macro_win_rate"] == pytest.approx((3.5 / 4 + 0.0) / 2)  # each language weighs the same
    assert figures["macro_ci_low"] <= figures["macro_win_rate"] <= figures["macro_ci_high"]
    assert dev_figures(verdicts())["n"] == 0 and dev_figures(verdicts())["win_rate"] is None


@pytest.mark.parametrize(("letters", "decision"), [
    ("wl", CONTINUE),  # 0.5: no worse than the previous policy
    ("tttt", CONTINUE),
    ("wwl", CONTINUE),
    ("wll", STOP),  # 1/3 < 0.5: the dev judge fell
    ("ttl", STOP),
])
def test_stop_when_the_dev_judge_falls(letters, decision):
    assert dev_decision(dev_figures(verdicts(("de", letters))), stop_below=0.5) == decision


def test_stop_below_is_the_threshold_and_no_verdicts_continue():
    fell = dev_figures(verdicts(("de", "wll")))  # 1/3
    assert dev_decision(fell, stop_below=0.3) == CONTINUE
    assert dev_decision(dev_figures(verdicts()), stop_below=0.5) == NO_DEV


def test_pick_the_best_beta_on_dev_ties_to_the_first():
    cands = [{"dev": dev_figures(verdicts(("de", s)))} for s in ("wl", "wwl", "wwl", "ll")]
    assert pick_candidate(cands) == 1
    unjudged = {"dev": dev_figures(verdicts())}  # every verdict quarantined: no figure at all
    fell = {"dev": dev_figures(verdicts(("de", "wll")))}  # measured, and below the stop line
    assert pick_candidate([fell, unjudged]) == 0 and pick_candidate([unjudged, fell]) == 1  # measured beats unmeasured
    assert dev_decision(fell["dev"], stop_below=0.5) == STOP  # so the stop rule sees the fall
    assert pick_candidate([unjudged, unjudged]) == 0


def test_a_stop_carries_to_every_later_round():
    offline = {"checkpoint_id": "ck_offline", "path": "/m/offline"}
    assert stopped_at(None) is None  # the offline policy has no online record
    cand = {"beta": 0.1, "path": "/m/r1", "checkpoint_id": "ck_r1", "dev": {"win_rate": 0.6}}
    r1 = round_record(1, CONTINUE, [cand], 0, offline)
    assert stopped_at(r1) is None and r1["policy_path"] == "/m/r1" and r1["kept_beta"] == 0.1
    r2 = round_record(2, STOP, [cand | {"path": "/m/r2"}], None, {"checkpoint_id": "ck_r1", "path": "/m/r1"})
    assert stopped_at(r2) == 2 and r2["policy_path"] == "/m/r1" and r2["kept_beta"] is None  # the round-1 policy stays
    r3 = round_record(3, "skipped: stopped at round 2", [], None, {"checkpoint_id": "ck_r2", "path": "/m/r1"}, stopped_at(r2))
    assert stopped_at(r3) == 2 and r3["policy_path"] == "/m/r1"


def test_betas_per_round_are_a_beta_or_candidates():
    cfg = OnlineConfig(betas=[0.1, [0.1, 0.5], [0.3]])
    assert [cfg.candidates(k) for k in (1, 2, 3)] == [[0.1], [0.1, 0.5], [0.3]]
    for bad, message in [([0.1, [], 0.1], "empty list"), ([0.1, [0.1, -1.0], 0.1], "must be positive"),
                         ([0.1, [0.2, 0.2], 0.1], "repeat")]:
        with pytest.raises(ValueError, match=message):
            OnlineConfig(betas=bad)


def test_the_dev_judge_sees_dev_prompts_only():
    prompts = pl.DataFrame({
        "prompt_id": ["p_dev", "p_eval", "p_train"], "language": ["en"] * 3, "split": ["dev", "eval", "train"],
        "text": ["How are you?", "What time is it?", "Hi"], "references": [["I am fine."], ["Three."], ["Hello."]],
    })
    answers = lambda texts: pl.DataFrame({"prompt_id": ["p_dev", "p_eval", "p_train"], "text": texts})  # noqa: E731
    judge = ReferenceJudge(ReferenceJudgeConfig(language_check=False))
    judged, _ = judge_on_dev(judge, prompts, answers(["I am fine.", "Three.", "Hello."]), answers(["No.", "No.", "No."]),
                             "new", "old", "dev_dpo_online_1", "r")
    assert judged["prompt_id"].to_list() == ["p_dev"] and judged["verdict"].to_list() == ["win"]
