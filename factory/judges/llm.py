"""The LLM judge, Arena-Hard style, through any generation backend.

The judge model sees the question (and reference replies when there are any)
and both answers, and must end with one of [[A>>B]], [[A>B]], [[A=B]], [[B>A]],
[[B>>A]]. Every pair is judged in both orders (A/B swapped and mapped back) to
cancel position bias; a strong verdict counts 3 times, as in Arena-Hard. An
answer without exactly one distinct verdict label is asked again once (new
seed); if it still does not parse, the pair's verdict is "unparsed" and the
caller quarantines it. A request that fails is such an answer for its pair only
(the verdict's explanation carries the error); the other pairs are judged.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from factory.generation.base import GenerationBackend, Message, SamplingConfig, generate_per_row
from factory.judges.base import JudgePrompt, Verdict, check_lengths
from factory.languages import LANGUAGES

LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
_ALIASES = {"B<<A": "A>>B", "B<A": "A>B", "B=A": "A=B", "A<B": "B>A", "A<<B": "B>>A"}
_PATTERN = re.compile(r"\[\[\s*([AB]\s*(?:>>|<<|>|<|=)\s*[AB])\s*\]\]")
# (score of the answer shown as A, weight); strong verdicts weigh 3, as Arena-Hard counts them 3 times.
_GAME = {"A>>B": (1.0, 3.0), "A>B": (1.0, 1.0), "A=B": (0.5, 1.0), "B>A": (0.0, 1.0), "B>>A": (0.0, 3.0)}
_SWAP = {"A>>B": "B>>A", "A>B": "B>A", "A=B": "A=B", "B>A": "A>B", "B>>A": "A>>B"}

SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user prompt displayed below. The user wrote in {language}; an answer in another language is a serious flaw. "
    "Consider helpfulness, relevance, correctness and concision. Avoid any position bias and do not let the length "
    "of the responses influence you. After a short explanation, output your final verdict with exactly one label:\n"
    "1. Assistant A is significantly better: [[A>>B]]\n2. Assistant A is slightly better: [[A>B]]\n"
    "3. Tie, relatively the same: [[A=B]]\n4. Assistant B is slightly better: [[B>A]]\n"
    "5. Assistant B is significantly better: [[B>>A]]\n"
    'Example output: "My final verdict is tie: [[A=B]]".'
)
USER_PROMPT = (
    "<|User Prompt|>\n{question}\n{references}"
    "<|The Start of Assistant A's Answer|>\n{answer_a}\n<|The End of Assistant A's Answer|>\n\n"
    "<|The Start of Assistant B's Answer|>\n{answer_b}\n<|The End of Assistant B's Answer|>"
)


class LLMJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=512)
    )
    system_prompt: str = SYSTEM_PROMPT
    user_prompt: str = USER_PROMPT
    show_references: bool = True
    strong_weight: float = 3.0
    retries: int = 1


def parse_verdict(text: str) -> str | None:
    """The single verdict label in a judge answer, or None when there is none or several differ."""
    found = {_ALIASES.get(m, m) for m in (re.sub(r"\s+", "", g) for g in _PATTERN.findall(text or ""))}
    found &= set(LABELS)
    return found.pop() if len(found) == 1 else None


def combine(label_ab: str, label_ba: str, strong_weight: float = 3.0) -> Verdict:
    """Merge the verdicts of both orders (label_ba is from the swapped game, A/B as shown) into A's verdict."""
    games = [label_ab, _SWAP[label_ba]]
    total = score = 0.0
    for g in games:
        s, w = _GAME[g]
        w = strong_weight if w > 1 else w
        total += w
        score += w * s
    soft = score / total
    outcome = "a_wins" if soft > 0.5 else "b_wins" if soft < 0.5 else "tie"
    return Verdict(outcome, f"A vs B: [[{label_ab}]]; swapped, mapped back: [[{games[1]}]]", abs(soft - 0.5) * 2)


class LLMJudge:
    """Pairwise judge backed by an LLM on any GenerationBackend (vLLM, OpenAI-compatible, a fake)."""

    order = "both"  # every verdict combines both presentation orders (judgments' `order` column)

    def __init__(self, backend: GenerationBackend, config: LLMJudgeConfig | None = None) -> None:
        self.backend = backend
        self.config = config or LLMJudgeConfig()
        self.name = f"llm:{backend.name}"

    def conversation(self, prompt: JudgePrompt, answer_a: str, answer_b: str) -> list[Message]:
        refs = ""
        if self.config.show_references and prompt.get("references"):
            refs = "<|Reference Replies|>\n" + "\n".join(f"- {r}" for r in prompt["references"]) + "\n\n"
        lang = LANGUAGES[prompt["language"]].name if prompt["language"] in LANGUAGES else prompt["language"]
        user = self.config.user_prompt.format(
            question=prompt["text"], references=refs, answer_a=answer_a, answer_b=answer_b
        )
        return [
            {"role": "system", "content": self.config.system_prompt.format(language=lang)},
            {"role": "user", "content": user},
        ]

    def _ask(self, conversations: list[list[Message]]) -> tuple[list[str | None], list[str], list[str]]:
        """Per conversation: its label after up to `retries` re-asks of the unparseable ones, the last raw
        answer, and the error of the last request when it failed ("" otherwise)."""
        sampling = self.config.sampling
        labels: list[str | None] = [None] * len(conversations)
        raw = [""] * len(conversations)
        errors = [""] * len(conversations)
        todo = list(range(len(conversations)))
        for attempt in range(self.config.retries + 1):
            if not todo:
                break
            attempt_sampling = sampling.model_copy(update={"seed": sampling.seed + attempt})
            answers = generate_per_row(self.backend, [conversations[i] for i in todo], attempt_sampling, n=1)
            for i, comp in zip(todo, answers, strict=True):
                raw[i], errors[i] = comp[0].text, comp[0].error
                labels[i] = parse_verdict(raw[i])
            todo = [i for i in todo if labels[i] is None]
        return labels, raw, errors

    def judge(self, prompts: list[JudgePrompt], answers_a: list[str], answers_b: list[str]) -> list[Verdict]:
        check_lengths(prompts, answers_a, answers_b)
        forward = [self.conversation(p, a, b) for p, a, b in zip(prompts, answers_a, answers_b, strict=True)]
        swapped = [self.conversation(p, b, a) for p, a, b in zip(prompts, answers_a, answers_b, strict=True)]
        labels, raw, errors = self._ask(forward + swapped)
        n = len(prompts)
        verdicts = []
        for i in range(n):
            ab, ba = labels[i], labels[n + i]
            if ab is None or ba is None:
                j = i if ab is None else n + i
                order = "A/B" if ab is None else "swapped"
                if errors[j]:
                    verdicts.append(Verdict("unparsed", f"the {order} judge request failed: {errors[j][:300]}"))
                else:
                    verdicts.append(
                        Verdict("unparsed", f"no verdict label in the {order} answer after retry: {raw[j][:200]!r}")
                    )
            else:
                verdicts.append(combine(ab, ba, self.config.strong_weight))
        return verdicts
