"""The generation interface every backend implements (transformers, vllm, openai).

A backend turns a batch of chat conversations into `n` completions each. The
teacher pool, the online DPO rounds, the translator and the LLM judges all
generate through this one interface, so swapping a tiny local model for a
served 70B model is a config change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

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


class GenerationBackend(Protocol):
    name: str

    def generate(self, conversations: list[list[Message]], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        """Return, for each conversation, `n` completions of the next assistant turn (same order)."""
        ...
