"""The reference judge (the embedded default): chrF against reference replies plus a language check.

Why not the Arbiter: the reward model that chose the training data is exactly
what the trained models were optimised towards, so judging with it measures
how well they learned to please the Arbiter, not whether they got better.
Evaluation needs an independent signal; here it is the corpus's own reference
replies (chrF, character n-grams, robust across scripts) and a language-ID check
(answering in the wrong language is the failure multilingual training fixes).

Rules per prompt:
1. An answer in the prompt's language (lingua's top language) beats one that is not.
2. Both in the language: the higher chrF (max over references) wins; a difference
   within `tie_epsilon` chrF points (0-100 scale) is a tie.
3. Both in another language (graded; `graded: false` makes every such pair a tie,
   the earlier rule): the judge still has two signals, in this order.
   a. How much of each answer is in the prompt's language (`langid.language_share`:
      the share of its letters in the language's script times lingua's confidence
      for the language on them). A difference above `share_margin` decides.
   b. chrF against the references, with the wider `wrong_language_tie_epsilon`
      margin: between two off-language answers chrF moves a few points on shared
      punctuation and stray letters alone.
   Otherwise it is a tie.
A prompt without references cannot be judged on chrF: unless the language
check decides it, its verdict is "unparsed" so the caller quarantines it.

Calibration of the margins (tests/factory/test_reference_judge_graded.py holds the
hand-made cases): among pairs of off-language answers that are equally uninformative
(gibberish, or the same reply in two other languages), chrF differences reach 2.8
points and share differences 0.04; among pairs where one off-language answer
carries the reference's content (a name, a date) or is partly in the language,
chrF differences start at 26.8 and share differences at 0.36. The defaults
(5 chrF points, 0.25 share) sit in those gaps, nearer the ties, so the noise of
equally bad answers stays a tie. Nothing was tuned on eval prompts' outcomes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from factory.judges.base import JudgePrompt, Verdict, check_lengths, outcome_from_difference
from factory.langid import detect_many, language_share, same_language


class ReferenceJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tie_epsilon: float = 1.0  # chrF points (0-100 scale): both answers in the language, closer than this is a tie
    graded: bool = True  # both answers off-language: decide on language share, then chrF (False: always a tie)
    share_margin: float = 0.25  # language-share difference (0-1) that decides between two off-language answers
    wrong_language_tie_epsilon: float = 5.0  # chrF points: two off-language answers closer than this tie
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
                verdicts.append(self._both_off_language(p, a, b))
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

    def _both_off_language(self, p: JudgePrompt, a: str, b: str) -> Verdict:
        """Rule 3: neither answer is in the prompt's language (see the module docstring)."""
        c = self.config
        lang = p["language"]
        if not c.graded:
            return Verdict("tie", f"neither answer is in {lang}", 0.0)
        sa, sb = language_share([a, b], lang, c.candidates)
        if abs(sa - sb) > c.share_margin:
            which = "A" if sa > sb else "B"
            return Verdict("a_wins" if sa > sb else "b_wins",
                           f"neither answer is in {lang}; {which} is more so (share A={sa:.2f} B={sb:.2f})", abs(sa - sb))
        fa = chrf_max(a, p["references"], c.char_order, c.word_order)
        fb = chrf_max(b, p["references"], c.char_order, c.word_order)
        if fa is None or fb is None:
            return Verdict("tie", f"neither answer is in {lang} (share A={sa:.2f} B={sb:.2f}); no references", 0.0)
        diff = fa - fb
        outcome = outcome_from_difference(diff, c.wrong_language_tie_epsilon)
        return Verdict(outcome, f"neither answer is in {lang} (share A={sa:.2f} B={sb:.2f}); chrF A={fa:.1f} B={fb:.1f}",
                       abs(diff))
