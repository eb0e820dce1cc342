"""Deterministic stand-in backends for runner tests (no model needed)."""

from __future__ import annotations

import time

import polars as pl

from factory.generation.base import Completion, SamplingConfig
from factory.ids import prompt_id


class EchoBackend:
    """Answers `<name>:<prompt>#<i>`; sleeps per call; raises on prompts containing `fail_on`."""

    def __init__(self, name: str, sleep_s: float = 0.0, fail_on: str | None = None, empty_on: str | None = None):
        self.name = name
        self.sleep_s = sleep_s
        self.fail_on = fail_on
        self.empty_on = empty_on
        self.prompts_seen: list[str] = []

    def generate(self, conversations, sampling: SamplingConfig, n: int = 1):
        texts = [c[-1]["content"] for c in conversations]
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise ConnectionError(f"boom on {self.fail_on}")
        time.sleep(self.sleep_s)
        self.prompts_seen.extend(texts)
        out = []
        for t in texts:
            if self.empty_on and self.empty_on in t:
                out.append([Completion("", 1, "stop", 0.01) for _ in range(n)])
            else:
                out.append([Completion(f"{self.name}:{t}#{i}", 3, "length", 0.01) for i in range(n)])
        return out


def make_prompts(count: int) -> pl.DataFrame:
    texts = [f"prompt number {i}" for i in range(count)]
    return pl.DataFrame({"prompt_id": [prompt_id("en", t) for t in texts], "language": ["en"] * count, "text": texts})
