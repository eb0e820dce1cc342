"""The generation interface every backend implements (transformers, vllm, openai).

A backend turns a batch of chat conversations into `n` completions each. The
teacher pool, the online DPO rounds, the translator and the LLM judges all
generate through this one interface, so swapping a tiny local model for a
served 70B model is a config change.

A backend's `generate()` raises when a conversation fails. Callers that keep
going row by row (pair builders, judges) call `generate_per_row`, which turns
each failed conversation into error completions carrying the reason, so the
caller quarantines that row and keeps the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from factory.settings import Strict

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}


class SamplingConfig(Strict):
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 48
    seed: int = 0

    def key(self) -> dict:
        """The parameters that identify a completion (part of completion_id)."""
        return self.model_dump()


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: Literal["stop", "length", "error"] | str
    seconds: float = 0.0
    error: str = ""  # why the request failed, when finish_reason == "error"


class GenerationBackend(Protocol):
    name: str

    def generate(
        self, conversations: list[list[Message]], sampling: SamplingConfig, n: int = 1
    ) -> list[list[Completion]]:
        """Return, for each conversation, `n` completions of the next assistant turn (same order)."""
        ...


class RowError(str):
    """Why one conversation failed (a str), and whether asking again can succeed: an HTTP 400
    for this input will not, a 503 or a timeout may."""

    retryable: bool

    def __new__(cls, reason: str, retryable: bool = True):
        obj = super().__new__(cls, reason)
        obj.retryable = retryable
        return obj

    def __reduce__(self):
        return (RowError, (str(self), self.retryable))


def retryable(reason: str) -> bool:
    """Whether a row that failed with `reason` may succeed when asked again (True unless a
    RowError says it cannot)."""
    return getattr(reason, "retryable", True)


class GenerationError(RuntimeError):
    """generate() failed for some conversations.

    `rows`, when the backend knows it, holds per conversation (same order) either
    its completions or the reason it failed (a str, a RowError when the backend
    knows whether asking again can help), so callers keep what succeeded without
    asking again.
    """

    def __init__(self, message: str, rows: Sequence[list[Completion] | str] | None = None):
        super().__init__(message)
        self.rows = list(rows) if rows is not None else None


def error_completions(reason: str, n: int) -> list[Completion]:
    return [Completion("", 0, "error", error=reason) for _ in range(n)]


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, GenerationError) else f"{type(exc).__name__}: {exc}"


def generate_per_row(
    backend: GenerationBackend, conversations: list[list[Message]], sampling: SamplingConfig, n: int = 1
) -> list[list[Completion]]:
    """`backend.generate`, where a failure costs only its own conversation.

    The batch is asked at once. If it raises, the rows the error reports as done
    (GenerationError.rows) are kept; otherwise every conversation is asked again
    on its own, as the generation runner does. A conversation that still fails
    gets `n` completions with finish_reason "error" and the reason in `error`.
    """
    if not conversations:
        return []
    try:
        return backend.generate(conversations, sampling, n=n)
    except Exception as exc:
        batch_error = exc
    rows = batch_error.rows if isinstance(batch_error, GenerationError) else None
    if rows is not None and len(rows) == len(conversations):
        return [error_completions(r, n) if isinstance(r, str) else r for r in rows]
    if len(conversations) == 1:
        return [error_completions(_describe(batch_error), n)]
    out = []
    for conversation in conversations:
        try:
            out.append(backend.generate([conversation], sampling, n=n)[0])
        except Exception as exc:
            out.append(error_completions(_describe(exc), n))
    return out
