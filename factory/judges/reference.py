"""The reference judge (the embedded default): chrF against reference replies plus a language check.

Why not the Arbiter: the reward model that chose the training data is exactly
what the trained models were optimised towards, so judging with it measures
how well they learned to please the Arbiter, not whether they got better.
Evaluation needs an independent signal; here it is the corpus's own reference
replies (chrF, character n-grams, robust across scripts) and a language-ID check
(answering in the wrong language is the failure multilingual training fixes).

Rules per prompt: an answer in the wrong language loses to one in the right
language; both wrong is a tie; otherwise the higher chrF (max over references)
wins, and a difference within `tie_epsilon` chrF points is a tie. A prompt
without references cannot be judged on chrF: unless the language check decides
it, its verdict is "unparsed" so the caller quarantines it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from factory.judges.base import JudgePrompt, Verdict, check_lengths, outcome_from_difference
from factory.langid import detect_many, same_language


class ReferenceJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tie_epsilon: float = 1.0  # chrF points (0-100 scale)
    char_order: int = 6
    word_order: int = 0  # 0 = chrF, 2 = chrF++
    language_check: bool = True
    candidates: list[str] | None = None  # languages lingua considers; None = all Aya codes


def chrf_max(answer: str, references: list[str], char_order: int = 6, word_order: int = 0) -> float | None:
    """Sentence-level chrF of `answer` against each reference, the best one; None without references."""
    from sacrebleu.metrics import CHRF

    refs = [r for r in references if r and r.strip()]
    if not refs:
        return None
    metric = CHRF(char_order=char_order, word_order=word_order)
    return max(metric.sentence_score(answer, [r]).score for r in refs)


class ReferenceJudge:
    """chrF-vs-references judge with a language-ID check (see module docstring)."""

    name = "reference"

    def __init__(self, config: ReferenceJudgeConfig | None = None) -> None:
        self.config = config or ReferenceJudgeConfig()

    def _languages_ok(self, prompts: list[JudgePrompt], answers: list[str]) -> list[bool]:
        if not self.config.language_check:
            return [True] * len(answers)
        detected = detect_many(answers, candidates=self.config.candidates)
        return [same_language(p["language"], d) for p, d in zip(prompts, detected, strict=True)]

    def judge(self, prompts: list[JudgePrompt], answers_a: list[str], answers_b: list[str]) -> list[Verdict]:
        check_lengths(prompts, answers_a, answers_b)
        ok = self._languages_ok(prompts + prompts, list(answers_a) + list(answers_b))
        ok_a, ok_b = ok[: len(prompts)], ok[len(prompts) :]
        c = self.config
        verdicts = []
        for p, a, b, la, lb in zip(prompts, answers_a, answers_b, ok_a, ok_b, strict=True):
            if la != lb:
                which = "A" if la else "B"
                verdicts.append(Verdict("a_wins" if la else "b_wins", f"only {which} answers in {p['language']}", 1.0))
                continue
            if not la:
                verdicts.append(Verdict("tie", f"neither answer is in {p['language']}", 0.0))
                continue
            fa = chrf_max(a, p["references"], c.char_order, c.word_order)
            fb = chrf_max(b, p["references"], c.char_order, c.word_order)
            if fa is None or fb is None:
                verdicts.append(Verdict("unparsed", "no reference replies to compare against"))
                continue
            diff = fa - fb
            outcome = outcome_from_difference(diff, c.tie_epsilon)
            verdicts.append(Verdict(outcome, f"chrF A={fa:.1f} B={fb:.1f}", abs(diff)))
        return verdicts
