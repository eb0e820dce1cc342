"""Generation through any OpenAI-compatible `/v1/chat/completions` server (vLLM serve, TGI, SGLang, APIs).

- Requests run with bounded concurrency. 429, 5xx, timeouts and connection
  errors are retried with exponential backoff plus jitter, capped at
  `max_backoff_s`; a server's Retry-After (seconds or an HTTP-date) wins when
  it asks for longer, up to its own cap `max_retry_after_s` (300 s).
- `timeout_s` is a deadline for the whole of one attempt (connect, send,
  headers, body): a server trickling bytes cannot hold a request longer.
- Servers that ignore `n` (llama.cpp, TGI, `transformers serve`) return fewer
  choices than asked; the rest are asked for again with seeds seed+i, and the
  backend then sends one request per sample for every later prompt.
- Circuit breaker: after `circuit_failures` consecutive attempts that say the
  server is unwell (connection errors, timeouts, 5xx, 401/403/404), further
  requests fail at once with "circuit open after N consecutive failures: ...";
  after `circuit_cooldown_s` one request is let through to probe the server.
- Every error text raised or logged has the API key and any Authorization /
  Bearer value redacted, since servers sometimes echo request headers.

A conversation that fails for good raises `BackendRequestError`; its `rows`
say which conversations succeeded, so callers quarantine only the failed ones
(each failure a `RowError` saying whether asking again can succeed: not for a
status outside RETRYABLE_STATUS, such as 400).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from factory.generation.base import Completion, GenerationError, Message, RowError, SamplingConfig, retryable

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Besides 5xx, the statuses that say nothing about the row and all about the deployment (bad key,
# wrong URL or model name): they count toward the circuit breaker.
UNHEALTHY_STATUS = {401, 403, 404}
REDACTED = "[REDACTED]"
_AUTH_VALUE = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\"',;}\]\r\n]+")
_BEARER_VALUE = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;}\]]+")
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]+):[^/\s@]+@")


class BackendRequestError(GenerationError):
    """A generation request failed for good (non-retryable status, retries exhausted, or circuit open).
    `retryable` is False when asking again cannot succeed (a status such as 400: this input is refused)."""

    def __init__(self, message: str, rows=None, retryable: bool = True):
        super().__init__(message, rows=rows)
        self.retryable = retryable


class CircuitOpenError(BackendRequestError):
    """The backend stopped calling the server after too many consecutive failures."""


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with each secret, every Authorization/Bearer value and URL passwords replaced by [REDACTED]."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _AUTH_VALUE.sub(rf"\g<1>{REDACTED}", text)
    text = _BEARER_VALUE.sub(rf"\g<1> {REDACTED}", text)
    return _URL_PASSWORD.sub(rf"\g<1>:{REDACTED}@", text)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds ("120") or an HTTP-date
    ("Wed, 21 Oct 2026 07:28:00 GMT", measured from `now`, default the current time; a date in the
    past is 0). None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


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
    """`generate()` against `{api_base}/chat/completions`, one request per conversation (or per sample)."""

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
        max_retry_after_s: float = 300.0,
        supports_n: bool = True,
        circuit_failures: int = 5,
        circuit_cooldown_s: float = 30.0,
    ):
        self.name = name or model
        self.model = model
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s  # cap of our own backoff
        self.max_retry_after_s = max_retry_after_s  # cap of a server's Retry-After (which wins when longer)
        self.supports_n = supports_n  # turned off when the server is seen ignoring `n`
        self.circuit_failures = circuit_failures
        self.circuit_cooldown_s = circuit_cooldown_s
        key = os.environ.get(api_key_env) if api_key_env else None
        self._secrets = (key,) if key else ()
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        elif api_key_env:
            log.warning(
                "%s: env var %s is not set, so requests to %s carry no Authorization header "
                "(set api_key_env to null for a server that needs no key)",
                self.name, api_key_env, self._redact(self.url),
            )  # fmt: skip
        self.requests_sent = 0  # every attempt, retries included (for metrics and tests)
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self._last_failure = ""
        self._opened_at: float | None = None  # circuit open since (monotonic), None when closed
        self._probing = False
        self._warned_n = False
        self._warned_identical = False

    def close(self) -> None:
        """Nothing to release: each generate() call opens and closes its own connection pool."""

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    # --- circuit breaker ----------------------------------------------------------------------

    async def _check_circuit(self) -> None:
        """Return when a request may go out; raise CircuitOpenError while the circuit is open."""
        while True:
            with self._lock:
                if self._opened_at is None:
                    return
                if not self._probing:
                    if time.monotonic() - self._opened_at >= self.circuit_cooldown_s:
                        self._probing = True  # half-open: this one request probes the server
                        return
                    raise CircuitOpenError(
                        f"{self._redact(self.url)}: circuit open after {self._consecutive_failures} consecutive "
                        f"failures: {self._last_failure}"
                    )
            await asyncio.sleep(0.05)  # a probe is in flight: its outcome decides for this request too

    def _record(self, healthy: bool, failure: str = "") -> None:
        with self._lock:
            if healthy:
                if self._opened_at is not None:
                    log.warning("%s: server at %s answers again; circuit closed", self.name, self._redact(self.url))
                self._consecutive_failures, self._opened_at, self._probing = 0, None, False
                return
            self._consecutive_failures += 1
            self._last_failure = failure
            if self._probing or (self._opened_at is None and self._consecutive_failures >= self.circuit_failures):
                if self._opened_at is None:
                    log.warning(
                        "%s: circuit open after %d consecutive failures; failing requests fast for %g s. Last: %s",
                        self.name, self._consecutive_failures, self.circuit_cooldown_s, failure,
                    )  # fmt: skip
                self._opened_at, self._probing = time.monotonic(), False

    # --- one request --------------------------------------------------------------------------

    async def _attempt(self, client: httpx.AsyncClient, body: dict) -> tuple[dict | None, str, float | None, bool]:
        """One HTTP attempt: (payload or None, failure text, retry-after, retryable)."""
        with self._lock:
            self.requests_sent += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await client.post(self.url, json=body)
        except TimeoutError:
            failure = f"no complete response within timeout_s={self.timeout_s:g}"
            self._record(False, failure)
            return None, failure, None, True
        except httpx.RequestError as exc:
            failure = self._redact(f"{type(exc).__name__}: {exc}")
            self._record(False, failure)
            return None, failure, None, True
        except BaseException:  # cancelled, or a bug: a probe that never finishes must not hold the others
            with self._lock:
                self._probing = False
            raise
        status = response.status_code
        if status == 200:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                self._record(True)
                return payload, "", None, False
            failure = f"HTTP 200 without a JSON object: {self._redact(response.text)[:200]}"
            self._record(False, failure)
            return None, failure, None, True
        failure = f"HTTP {status}: {self._redact(response.text)[:200]}"  # redact before cutting: no key halves
        # 5xx/401/403/404: the server or deployment is unwell. Other 4xx (this input) and 429 (throttling):
        # the server is up and answering.
        self._record(not (status >= 500 or status in UNHEALTHY_STATUS), failure)
        return None, failure, _retry_after(response), status in RETRYABLE_STATUS

    async def _post(self, client: httpx.AsyncClient, body: dict) -> dict:
        last = ""
        for attempt in range(self.max_retries + 1):
            await self._check_circuit()
            payload, last, retry_after, retryable = await self._attempt(client, body)
            if payload is not None:
                return payload
            if not retryable:
                raise BackendRequestError(f"{self._redact(self.url)} {last}", retryable=False)
            if attempt < self.max_retries:
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                await asyncio.sleep(max(delay, min(self.max_retry_after_s, retry_after or 0.0)))
        raise BackendRequestError(
            f"{self._redact(self.url)} failed after {self.max_retries + 1} attempts; last: {last}"
        )

    async def _request(
        self, client: httpx.AsyncClient, conversation: list[Message], sampling: SamplingConfig, n: int, seed: int
    ) -> list[Completion]:
        body = {
            "model": self.model,
            "messages": conversation,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": seed,
        }
        if n > 1:
            body["n"] = n
        start = time.perf_counter()
        payload = await self._post(client, body)
        elapsed = time.perf_counter() - start
        choices = sorted(payload.get("choices") or [], key=lambda c: c.get("index", 0))[:n]
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        tokens = _split_tokens((payload.get("usage") or {}).get("completion_tokens"), texts)
        return [
            Completion(text, n_tok, c.get("finish_reason") or "stop", elapsed / max(1, len(choices)))
            for text, n_tok, c in zip(texts, tokens, choices, strict=True)
        ]

    def _note_ignored_n(self, asked: int, got: int, n: int) -> None:
        with self._lock:
            self.supports_n = False
            if self._warned_n:
                return
            self._warned_n = True
        log.warning(
            "%s: server at %s returned %d of n=%d choices, so it ignores `n`: making %d requests per prompt "
            "(seed, seed+1, ...) from now on",
            self.name, self._redact(self.url), got, asked, n,
        )  # fmt: skip

    async def _samples(
        self, client: httpx.AsyncClient, conversation: list[Message], sampling: SamplingConfig, n: int
    ) -> list[Completion]:
        """`n` completions, asking again (seed + samples so far) while the server returns fewer than asked."""
        out: list[Completion] = []
        while len(out) < n:
            want = n - len(out) if self.supports_n else 1
            got = await self._request(client, conversation, sampling, want, sampling.seed + len(out))
            if not got:
                raise BackendRequestError(f"{self._redact(self.url)} returned no choices")
            if len(got) < want:
                self._note_ignored_n(want, len(got), n)
            out.extend(got)
        if n > 1 and sampling.temperature > 0 and len({c.text for c in out}) == 1 and len(out[0].text) > 20:
            self._note_identical_samples(n, sampling.temperature)
        return out

    def _note_identical_samples(self, n: int, temperature: float) -> None:
        """k identical answers at temperature > 0 mean the server decodes greedily (e.g. `transformers
        serve` samples only when the model's generation_config.json has `do_sample: true`)."""
        with self._lock:
            if self._warned_identical:
                return
            self._warned_identical = True
        log.warning(
            "%s: %d samples at temperature %.2f came back identical: the server at %s seems to decode greedily "
            "(for `transformers serve`, set `do_sample: true` in the model's generation_config.json)",
            self.name, n, temperature, self._redact(self.url),
        )  # fmt: skip

    # --- a batch --------------------------------------------------------------------------------

    async def _generate(
        self, conversations: list[list[Message]], sampling: SamplingConfig, n: int
    ) -> list[list[Completion] | str]:
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        slots = asyncio.Semaphore(self.max_concurrency)

        async def row(client: httpx.AsyncClient, conversation: list[Message]) -> list[Completion] | str:
            async with slots:
                try:
                    return await self._samples(client, conversation, sampling, n)
                except BackendRequestError as exc:
                    return RowError(str(exc), exc.retryable)
                except Exception as exc:  # a malformed answer: this row fails, the others go on
                    return self._redact(f"{type(exc).__name__}: {exc}")

        async with httpx.AsyncClient(headers=self.headers, timeout=self.timeout_s, limits=limits) as client:
            return list(await asyncio.gather(*(row(client, c) for c in conversations)))

    def generate(
        self, conversations: list[list[Message]], sampling: SamplingConfig, n: int = 1
    ) -> list[list[Completion]]:
        """`n` completions per conversation; raises BackendRequestError (with per-row `rows`) if any fails for good."""
        coro = self._generate(conversations, sampling, n)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            rows = asyncio.run(coro)
        else:  # called from inside an event loop (a notebook, an async caller): run ours on a thread
            with ThreadPoolExecutor(max_workers=1) as pool:
                rows = pool.submit(asyncio.run, coro).result()
        errors = [r for r in rows if isinstance(r, str)]
        if errors:
            message = (
                errors[0] if len(rows) == 1 else f"{len(errors)} of {len(rows)} requests failed; first: {errors[0]}"
            )
            raise BackendRequestError(message, rows=rows, retryable=any(retryable(e) for e in errors))
        return rows  # type: ignore[return-value]
