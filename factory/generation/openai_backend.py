"""Generation through any OpenAI-compatible `/v1/chat/completions` server (vLLM serve, TGI, SGLang, APIs).

Requests run with bounded concurrency; 429, 5xx, timeouts and connection errors
are retried with exponential backoff plus jitter (a server's Retry-After wins
when it asks for longer). A request that still fails raises `BackendRequestError`,
which the runner catches and quarantines prompt by prompt.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from factory.generation.base import Completion, Message, SamplingConfig

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class BackendRequestError(RuntimeError):
    """A generation request failed for good (non-retryable status, or retries exhausted)."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _split_tokens(total: int | None, texts: list[str]) -> list[int]:
    """Share `usage.completion_tokens` among choices by text length (exact when there is one choice)."""
    if total is None:
        return [0] * len(texts)
    if len(texts) == 1:
        return [total]
    weights = [max(1, len(t)) for t in texts]
    shares = [total * w // sum(weights) for w in weights]
    shares[-1] += total - sum(shares)
    return shares


class OpenAIBackend:
    """`generate()` against `{api_base}/chat/completions`, one request per conversation."""

    def __init__(
        self,
        model: str,
        api_base: str,
        name: str = "",
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        supports_n: bool = True,
    ):
        self.name = name or model
        self.model = model
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.supports_n = supports_n
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self.client = httpx.Client(headers=headers, timeout=timeout_s, limits=limits)
        self.requests_sent = 0  # every attempt, retries included (for metrics and tests)

    def close(self) -> None:
        self.client.close()

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
        time.sleep(min(self.max_backoff_s, max(delay, retry_after or 0.0)))

    def _post(self, body: dict) -> dict:
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            self.requests_sent += 1
            try:
                response = self.client.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response.json()
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRYABLE_STATUS:
                    raise BackendRequestError(f"{self.url} {last}")
                retry_after = _retry_after(response)
            if attempt < self.max_retries:
                self._wait(attempt, retry_after)
        raise BackendRequestError(f"{self.url} failed after {self.max_retries + 1} attempts; last: {last}")

    def _request(self, conversation: list[Message], sampling: SamplingConfig, n: int, seed: int) -> list[Completion]:
        body = {
            "model": self.model,
            "messages": conversation,
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": seed,
        }
        start = time.perf_counter()
        payload = self._post(body)
        elapsed = time.perf_counter() - start
        choices = sorted(payload.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise BackendRequestError(f"asked for n={n} choices, server returned {len(choices)}")
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        tokens = _split_tokens((payload.get("usage") or {}).get("completion_tokens"), texts)
        return [
            Completion(text, n_tok, c.get("finish_reason") or "stop", elapsed / n)
            for text, n_tok, c in zip(texts, tokens, choices, strict=True)
        ]

    def _one(self, conversation: list[Message], sampling: SamplingConfig, n: int) -> list[Completion]:
        if self.supports_n:
            return self._request(conversation, sampling, n, sampling.seed)
        # servers without `n`: one request per sample, seeds offset so samples differ
        return [self._request(conversation, sampling, 1, sampling.seed + i)[0] for i in range(n)]

    def generate(
        self, conversations: list[list[Message]], sampling: SamplingConfig, n: int = 1
    ) -> list[list[Completion]]:
        """`n` completions per conversation; raises BackendRequestError if any request fails for good."""
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(lambda c: self._one(c, sampling, n), conversations))
