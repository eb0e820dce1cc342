from __future__ import annotations

from factory.generation.base import Completion, SamplingConfig
from factory.scoring.llm_judge import LLMJudgeScorer, LLMScorerConfig, parse_score


class ScriptedBackend:
    """A GenerationBackend that answers each call from a script: answers[call][i] for the i-th conversation."""

    name = "scripted"

    def __init__(self, answers: list[list[str]]):
        self.answers = answers
        self.calls: list[tuple[list, SamplingConfig]] = []

    def generate(self, conversations, sampling, n=1):
        script = self.answers[len(self.calls)]
        self.calls.append((conversations, sampling))
        out = []
        for i in range(len(conversations)):
            text = script[i]
            reason = "error" if text == "<error>" else "stop"
            out.append(
                [Completion(text="" if reason == "error" else text, n_tokens=len(text.split()), finish_reason=reason)]
            )
        return out


PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
COMPLETIONS = ["answer {0}", "answer 1", "answer 2"]


def test_parse_score_reads_the_last_in_range_score():
    assert parse_score("Good reply. Score: 7") == 7.0
    assert parse_score("score=8/10") == 8.0
    assert parse_score("Score: 3 ... on reflection, Score: 6") == 6.0
    assert parse_score("Rating: [[9]]") == 9.0
    assert parse_score("[[4]]") == 4.0
    assert parse_score("Score: 11") is None  # off the 1-10 scale
    assert parse_score("I like it a lot") is None


def test_unparseable_answer_is_retried_once_then_none():
    backend = ScriptedBackend([["Score: 7", "no idea", "hmm"], ["Score: 4", "still nothing"]])
    judge = LLMJudgeScorer(backend, sampling=SamplingConfig(temperature=0.0, seed=5))
    verdicts = judge.judge(PROMPTS, COMPLETIONS)
    assert [v.score for v in verdicts] == [7.0, 4.0, None]
    assert [v.attempts for v in verdicts] == [1, 2, 2]
    # the retry asks only the failed ones, with the next seed
    assert len(backend.calls[1][0]) == 2
    assert [c[1].seed for c in backend.calls] == [5, 6]
    assert len(backend.calls) == 2  # one retry, no more


def test_error_completion_counts_as_unparseable_and_score_returns_none():
    backend = ScriptedBackend([["<error>", "Score: 2", "Score: 10"], ["<error>"]])
    scores = LLMScorerConfig().build(backend).score(PROMPTS, COMPLETIONS)
    assert scores == [None, 2.0, 10.0]


def test_rubric_is_filled_without_format_braces():
    backend = ScriptedBackend([["Score: 5"]])
    judge = LLMJudgeScorer(backend, rubric="Q={prompt} A={completion} on {scale_min}-{scale_max}", scale_max=5)
    assert judge.score(PROMPTS[:1], ["{not a field}"]) == [5.0]
    sent = backend.calls[0][0][0][0]["content"]
    assert sent == "Q=User: question 0 A={not a field} on 1-5"
