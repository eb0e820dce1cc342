"""Absolute reward from an LLM judge behind any GenerationBackend (vLLM, OpenAI-compatible, local).

The judge reads a rubric filled with the conversation and the completion and
answers with a score on a fixed scale ("Score: 7"). An answer without a
parseable in-range score is asked again once (with the next sampling seed);
if it still fails the reward is None, so the caller quarantines it instead of
scoring it 0. A request that fails counts as such an answer for its row only
(the verdict keeps the error); the other rows are scored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from factory.generation.base import GenerationBackend, Message, SamplingConfig, generate_per_row

DEFAULT_RUBRIC = (
    "You are grading an assistant's reply. Judge helpfulness, correctness, fluency, and whether the "
    "reply is in the same language as the user's message.\n\n"
    "[Conversation]\n{prompt}\n\n[Reply]\n{completion}\n\n"
    "Give a short justification, then end with a line of the form 'Score: N' where N is an integer "
    "from {scale_min} to {scale_max}."
)

_SCORE = re.compile(r"(?:score|rating)\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*\d+)?", re.IGNORECASE)
_BRACKETS = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")


class LLMScorerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "llm_judge"
    rubric: str = DEFAULT_RUBRIC  # placeholders: {prompt} {completion} {scale_min} {scale_max}
    scale_min: int = 1
    scale_max: int = 10
    retries: int = Field(1, ge=0)  # re-asks of an unparseable answer before giving up (None)
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=256)

    def build(self, backend: GenerationBackend) -> LLMJudgeScorer:
        return LLMJudgeScorer(backend, **self.model_dump(exclude={"sampling"}), sampling=self.sampling)


@dataclass
class JudgeVerdict:
    score: float | None
    answer: str  # the last answer read
    attempts: int
    error: str = ""  # why the last request failed, when it did


def parse_score(answer: str, scale_min: float = 1, scale_max: float = 10) -> float | None:
    """The last 'Score: N' (or '[[N]]') in `answer` if it lies on the scale, else None."""
    found = _SCORE.findall(answer) or _BRACKETS.findall(answer)
    if not found:
        return None
    value = float(found[-1])
    return value if scale_min <= value <= scale_max else None


def render_conversation(messages: list[Message]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


class LLMJudgeScorer:
    """RewardScorer that asks an LLM for an absolute score; None when no score can be read."""

    def __init__(
        self,
        backend: GenerationBackend,
        rubric: str = DEFAULT_RUBRIC,
        sampling: SamplingConfig | None = None,
        scale_min: int = 1,
        scale_max: int = 10,
        retries: int = 1,
        name: str = "llm_judge",
    ) -> None:
        if scale_min >= scale_max:
            raise ValueError(f"scale_min ({scale_min}) must be below scale_max ({scale_max})")
        self.backend = backend
        self.rubric = rubric
        self.sampling = sampling or LLMScorerConfig().sampling
        self.scale_min, self.scale_max = scale_min, scale_max
        self.retries = retries
        self.name = name

    def judge_prompt(self, prompt: list[Message], completion: str) -> list[Message]:
        # str.replace, not str.format: rubrics and completions may contain braces.
        text = self.rubric
        for key, value in {
            "{prompt}": render_conversation(prompt),
            "{scale_min}": str(self.scale_min),
            "{scale_max}": str(self.scale_max),
        }.items():
            text = text.replace(key, value)
        return [{"role": "user", "content": text.replace("{completion}", completion)}]

    def judge(self, prompts: list[list[Message]], completions: list[str]) -> list[JudgeVerdict]:
        """Verdicts with the parsed score (or None), the last answer and the number of attempts."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        conversations = [self.judge_prompt(p, c) for p, c in zip(prompts, completions, strict=True)]
        verdicts = [JudgeVerdict(None, "", 0) for _ in conversations]
        pending = list(range(len(conversations)))
        for attempt in range(self.retries + 1):
            if not pending:
                break
            # A new seed per attempt, so a deterministic backend can answer differently.
            sampling = self.sampling.model_copy(update={"seed": self.sampling.seed + attempt})
            outputs = generate_per_row(self.backend, [conversations[i] for i in pending], sampling, n=1)
            still = []
            for i, out in zip(pending, outputs, strict=True):
                answer = out[0] if out else None
                text = answer.text if answer is not None and answer.finish_reason != "error" else ""
                score = parse_score(text, self.scale_min, self.scale_max)
                verdicts[i] = JudgeVerdict(score, text, attempt + 1, answer.error if answer is not None else "")
                if score is None:
                    still.append(i)
            pending = still
        return verdicts

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float | None]:
        return [v.score for v in self.judge(prompts, completions)]
