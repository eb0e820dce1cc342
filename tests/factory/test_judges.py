from __future__ import annotations

import pytest

from factory.generation.base import Completion, SamplingConfig
from factory.judges import JUDGES, JudgeConfig, build_judge, judgments_frame
from factory.judges.base import Verdict
from factory.judges.llm import LLMJudge, combine, parse_verdict
from factory.judges.reference import ReferenceJudge, chrf_max
from factory.judges.reward import RewardJudge

EN = {
    "prompt_id": "p_en",
    "language": "en",
    "text": "How are you today?",
    "references": ["I am doing well, thank you for asking."],
}
FR = {
    "prompt_id": "p_fr",
    "language": "fr",
    "text": "Comment vas-tu ?",
    "references": ["Je vais très bien, merci beaucoup."],
}


def test_registry_builds_default_and_rejects_unknown():
    assert {"reference", "reward", "llm"} <= set(JUDGES)
    assert isinstance(build_judge(), ReferenceJudge)
    with pytest.raises(KeyError):
        build_judge(JudgeConfig(name="nope"))
    with pytest.raises(ValueError, match="RewardScorer"):
        build_judge(JudgeConfig(name="reward"))
    with pytest.raises(ValueError):
        JudgeConfig(unknown_field=1)


def test_chrf_max_takes_best_reference():
    one = chrf_max("I am doing well", ["I am doing well"])
    both = chrf_max("I am doing well", ["completely unrelated text here", "I am doing well"])
    assert one == pytest.approx(100.0)
    assert both == pytest.approx(one)
    assert chrf_max("x", []) is None


def test_reference_judge_rules():
    judge = ReferenceJudge()
    prompts = [EN, FR, FR, EN, {**EN, "references": []}]
    a = [
        "I am doing well, thank you.",  # closer to the reference
        "Je vais bien, merci.",  # right language
        "I am doing very well, thank you so much.",  # wrong language
        "I am doing well, thank you.",  # identical answers tie
        "I am fine, thanks.",
    ]
    b = [
        "The train leaves from the station at noon.",
        "I am fine thank you very much my friend.",
        "The weather is lovely in the mountains today.",
        "I am doing well, thank you.",
        "I am fine, thanks.",
    ]
    v = judge.judge(prompts, a, b)
    assert [x.outcome for x in v] == ["a_wins", "a_wins", "tie", "tie", "unparsed"]
    assert [x.score for x in v[:4]] == [1.0, 1.0, 0.5, 0.5] and v[4].score is None
    assert "fr" in v[1].explanation
    # Swapping A and B mirrors the verdicts.
    mirrored = judge.judge(prompts[:2], b[:2], a[:2])
    assert [x.outcome for x in mirrored] == ["b_wins", "b_wins"]


class FakeScorer:
    name = "fake_rm"

    def __init__(self, rewards: dict[str, float | None]):
        self.rewards = rewards
        self.calls = 0

    def score(self, prompts, completions):
        self.calls += 1
        assert all(p[0]["role"] == "user" for p in prompts)
        return [self.rewards[c] for c in completions]


def test_reward_judge_margin_and_missing_reward():
    scorer = FakeScorer({"good": 2.0, "bad": -1.0, "close": 1.95, "broken": None})
    judge = build_judge(JudgeConfig(name="reward"), scorer=scorer)
    assert isinstance(judge, RewardJudge)
    v = judge.judge([EN] * 4, ["good", "bad", "good", "broken"], ["bad", "good", "close", "good"])
    assert [x.outcome for x in v] == ["a_wins", "b_wins", "tie", "unparsed"]
    assert v[0].strength == pytest.approx(3.0)
    assert scorer.calls == 1  # one batch for both sides


def test_parse_verdict():
    assert parse_verdict("Reasoning... My final verdict is [[A>>B]].") == "A>>B"
    assert parse_verdict("[[ B > A ]]") == "B>A"
    assert parse_verdict("[[A<B]]") == "B>A"
    assert parse_verdict("either [[A>B]] or [[B>A]]") is None
    assert parse_verdict("A is better") is None
    assert parse_verdict("[[A>B]] so again [[A>B]]") == "A>B"


def test_combine_both_orders_and_strong_weight():
    assert combine("A>B", "B>A").outcome == "a_wins"  # consistent preference for the original A
    assert combine("A>B", "A>B").outcome == "tie"  # position bias cancels out
    assert combine("A>>B", "A>B").outcome == "a_wins"  # strong (x3) beats weak the other way
    assert combine("A=B", "A>>B").outcome == "b_wins"
    assert combine("A>>B", "B>>A").strength == pytest.approx(1.0)


class ScriptedBackend:
    """In-process GenerationBackend: answers by the first answer text it sees in each prompt."""

    name = "scripted"

    def __init__(self, script):
        self.script = script  # list of callables(conversation, seed) -> str
        self.calls: list[tuple[int, int]] = []

    def generate(self, conversations, sampling: SamplingConfig, n: int = 1):
        self.calls.append((len(conversations), sampling.seed))
        out = []
        for conv in conversations:
            user = conv[-1]["content"]
            shown_a = user.split("<|The Start of Assistant A's Answer|>\n")[1].split("\n")[0]
            text = self.script(shown_a, sampling.seed)
            out.append([Completion(text=text, n_tokens=len(text.split()), finish_reason="stop") for _ in range(n)])
        return out


def test_llm_judge_both_orders_retry_and_unparsed():
    def script(shown_a: str, seed: int) -> str:
        if shown_a.startswith("good"):
            return "A is clearly better. [[A>>B]]"
        if shown_a.startswith("flaky"):
            return "hmm" if seed == 0 else "[[A=B]]"  # parses only on the retry
        if shown_a.startswith("garbage"):
            return "I cannot decide."
        return "B is better: [[B>A]]"

    backend = ScriptedBackend(script)
    judge = LLMJudge(backend)
    prompts = [EN, FR, EN, EN]
    a = ["good answer", "weak answer", "flaky one", "garbage one"]
    b = ["weak answer", "good answer", "flaky two", "other"]
    v = judge.judge(prompts, a, b)
    assert [x.outcome for x in v[:3]] == ["a_wins", "b_wins", "tie"]
    assert v[3].outcome == "unparsed" and "after retry" in v[3].explanation
    # 8 conversations (both orders) first, then one retry batch of the unparseable ones with a new seed.
    assert backend.calls[0] == (8, 0)
    assert backend.calls[1][1] == 1 and len(backend.calls) == 2
    system = judge.conversation(FR, "x", "y")[0]["content"]
    assert "French" in system


def test_judgments_frame_quarantines_unparsed():
    verdicts = [Verdict("a_wins", "ok", 1.0), Verdict("unparsed", "no label")]
    kept, bad = judgments_frame(
        [EN, FR], ["m1", "m2"], ["b1", "b2"], verdicts, judge="reference", model="ck_m", baseline="ck_b", stage="sft"
    )
    assert kept.height == 1 and bad.height == 1
    assert kept["verdict"].to_list() == ["win"] and kept["score"].to_list() == [1.0]
    assert kept["judgment_id"][0].startswith("j_")
    assert "no label" in bad["reason"][0] and "p_fr" in bad["payload"][0]


def test_judgments_say_which_orders_were_judged():
    """The LLM judge (named "llm:<backend>") judges both presentation orders, and its judgment ids say
    so (they hash the order); the reference judge reads one."""
    import polars as pl

    from factory.evaluation import judge_against_baseline
    from factory.ids import judgment_id

    prompts = pl.DataFrame({"prompt_id": ["p1"], "language": ["en"], "text": ["hi"], "references": [["hello"]], "split": ["eval"]})
    answers = pl.DataFrame({"prompt_id": ["p1"], "text": ["good answer"]})
    baseline = pl.DataFrame({"prompt_id": ["p1"], "text": ["weak answer"]})
    llm = LLMJudge(ScriptedBackend(lambda shown_a, seed: "[[A>B]]" if shown_a.startswith("good") else "[[B>A]]"))
    assert llm.name == "llm:scripted"
    for judge, order in ((llm, "both"), (ReferenceJudge(), "ab")):
        kept, _ = judge_against_baseline(judge, prompts, answers, baseline, "ck_m", "ck_b", "sft", "r")
        assert kept["judgment_id"].to_list() == [judgment_id("p1", "ck_m", "ck_b", judge.name, order)], judge.name
