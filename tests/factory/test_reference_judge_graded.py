"""The graded reference judge on hand-made cases: clear wins, clear ties, and pairs where both
answers are off-language but one is partly in the language or carries the reference's content.
These cases are where the margins were calibrated (see factory/judges/reference.py)."""

from __future__ import annotations

import pytest

from factory.judges.reference import ReferenceJudge, ReferenceJudgeConfig, chrf_max
from factory.langid import language_share

# (language, references, answer A, answer B, expected outcome)
BOTH_OFF_LANGUAGE_TIES = [
    ("ko", ["잘 지내요, 고마워요"], "I am fine", "Je vais bien"),  # two other languages, nothing shared
    ("en", ["I am fine, thanks."], "Estoy bien, gracias.", "Sto bene, grazie."),  # the same reply in es and it
    ("en", ["I like pizza."], "No, et am una p is is", "No, et p is unaal."),  # the demo's gibberish
    ("es", ["Me gusta la pizza."], "I am am am am am.", "No, et software, et am."),
    ("de", ["Ich bin müde."], "Ik am je.", "No, et p is una pd."),
]
BOTH_OFF_LANGUAGE_A_WINS = [
    ("ko", ["잘 지내요"], "잘 지내요 I am fine", "I am fine thanks"),  # A is partly Korean
    ("ja", ["元気です"], "私は元気です hello", "I am fine"),  # A is mostly Japanese (detected ja: rule 1)
    ("en", ["My name is Maria."], "Me llamo Maria.", "Tengo hambre."),  # A carries the reference's name
    ("fr", ["Je m'appelle Paris Hilton, 1981."], "My name is Paris Hilton, 1981.", "I am a cat."),
]


def prompt(language: str, references: list[str]) -> dict:
    return {"prompt_id": f"p_{language}", "language": language, "text": "?", "references": references}


def judge_one(judge: ReferenceJudge, case) -> str:
    language, refs, a, b = case
    return judge.judge([prompt(language, refs)], [a], [b])[0].outcome


@pytest.mark.parametrize("case", BOTH_OFF_LANGUAGE_TIES)
def test_equally_uninformative_off_language_answers_tie(case):
    assert judge_one(ReferenceJudge(), case) == "tie"


@pytest.mark.parametrize("case", BOTH_OFF_LANGUAGE_A_WINS)
def test_off_language_answer_with_information_wins_both_ways(case):
    judge = ReferenceJudge()
    assert judge_one(judge, case) == "a_wins"
    language, refs, a, b = case
    assert judge_one(judge, (language, refs, b, a)) == "b_wins"  # mirrored


def test_default_margins_sit_between_hand_made_ties_and_wins():
    """The calibration itself: both margins separate every hand-made tie from every hand-made win."""
    c = ReferenceJudgeConfig()

    def gaps(cases):
        chrf, share = [], []
        for language, refs, a, b in cases:
            chrf.append(abs(chrf_max(a, refs) - chrf_max(b, refs)))
            sa, sb = language_share([a, b], language)
            share.append(abs(sa - sb))
        return chrf, share

    tie_chrf, tie_share = gaps(BOTH_OFF_LANGUAGE_TIES)
    win_chrf, win_share = gaps(BOTH_OFF_LANGUAGE_A_WINS)
    assert max(tie_chrf) < c.wrong_language_tie_epsilon < min(win_chrf)
    assert max(tie_share) < c.share_margin
    assert any(s > c.share_margin for s in win_share)  # the partly-in-language cases win on share


def test_clear_cases_in_the_language_are_unchanged():
    judge = ReferenceJudge()
    en = prompt("en", ["The capital of France is Paris."])
    v = judge.judge([en, en, en], ["The capital of France is Paris.", "Paris is nice.", "Le chat dort."],
                    ["I like dogs a lot, really.", "Paris is nice.", "The capital of France is Paris."])
    assert [x.outcome for x in v] == ["a_wins", "tie", "b_wins"]  # chrF; identical; only B in English


def test_graded_false_restores_both_off_language_tie():
    judge = ReferenceJudge(ReferenceJudgeConfig(graded=False))
    for case in [c for c in BOTH_OFF_LANGUAGE_A_WINS if c[0] != "ja"]:  # both detected off-language
        v = judge.judge([prompt(case[0], case[1])], [case[2]], [case[3]])[0]
        assert v.outcome == "tie" and v.explanation.startswith("neither answer is in")


def test_both_off_language_explanation_names_the_signal():
    v = ReferenceJudge().judge([prompt("ko", ["잘 지내요"])], ["잘 지내요 I am fine"], ["I am fine thanks"])[0]
    assert v.explanation.startswith("neither answer is in ko") and "share A=" in v.explanation
