from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest

from factory.generation.base import SamplingConfig, generate_per_row
from factory.generation.openai_backend import BackendRequestError, OpenAIBackend, parse_retry_after, redact
from factory.generation.registry import (
    TeacherConfig,
    make_backend,
    model_identity,
    without_api_base_userinfo,
    without_userinfo,
)
from factory.generation.runner import generate_completions, read_shards
from factory.judges.llm import LLMJudge
from factory.pairs import native_vs_translated
from factory.scoring.llm_judge import LLMJudgeScorer
from tests.factory.generation.fakes import EchoBackend, make_prompts


class ChatServer:
    """A real chat-completions server on 127.0.0.1 with scripted failures per prompt.

    Prompt content decides the behaviour: "429 then ok" fails once with 429 and
    Retry-After, "500 twice" fails twice with 500, "slow once" sleeps past the
    client timeout once, "always 503" never succeeds, "bad request" gets a 400,
    "echo secrets" gets a 400 (or 500 with "echo secrets 500") whose body echoes
    the request's Authorization header, "trickle body" / "trickle headers" send
    one byte every 0.1 s for up to 30 s. With `ignore_n` the server answers one
    choice whatever `n` is (as llama.cpp, TGI and `transformers serve` do).
    """

    def __init__(self, ignore_n: bool = False):
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.ignore_n = ignore_n
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _trickle(self, data: bytes):
                try:
                    for _ in range(300):
                        if server.stop.wait(0.1):
                            return
                        self.wfile.write(data)
                        self.wfile.flush()
                except OSError:
                    pass  # the client hung up, as it should

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    attempt = server.attempts[prompt] = server.attempts.get(prompt, 0) + 1
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if "429 then ok" in prompt and attempt == 1:
                    return self._send(429, {"error": "rate limited"}, {"Retry-After": "0.3"})
                if "500 twice" in prompt and attempt <= 2:
                    return self._send(500, {"error": "oops"})
                if "always 503" in prompt:
                    return self._send(503, {"error": "down"})
                if "bad request" in prompt:
                    return self._send(400, {"error": "bad"})
                if "echo secrets" in prompt:
                    auth = self.headers.get("Authorization")
                    message = "x" * 170 + f" invalid key {auth.split()[-1]}; you sent Authorization: {auth}"
                    return self._send(500 if "500" in prompt else 400, {"error": message})
                if "trickle headers" in prompt:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    return self._trickle(b"a")
                if "trickle body" in prompt:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    return self._trickle(b" ")
                if "slow once" in prompt and attempt == 1:
                    time.sleep(1.0)
                n = 1 if server.ignore_n else body.get("n", 1)
                suffix = f" (seed {body['seed']})" if server.ignore_n and "greedy" not in prompt else ""
                choices = [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": "" if "empty" in prompt else f"{prompt} -> answer {i}{suffix}",
                        },
                        "finish_reason": "length" if i == 1 else "stop",
                    }
                    for i in reversed(range(n))  # out of order on purpose
                ]
                usage = {"prompt_tokens": 5, "completion_tokens": 7 * n, "total_tokens": 0}
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": choices,
                        "usage": usage,
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


def _backend(server, monkeypatch, **kw):
    monkeypatch.setenv("TEST_TEACHER_KEY", "sk-test-123")
    cfg = TeacherConfig(
        name="served",
        backend="openai",
        model="served-model",
        api_base=server.url,
        api_key_env="TEST_TEACHER_KEY",
        max_concurrency=4,
        timeout_s=0.5,
        max_retries=3,
    )
    backend = make_backend(cfg.model_copy(update=kw))
    backend.backoff_s = 0.01  # keep the test fast; Retry-After still applies
    return backend


def test_parses_choices_with_auth_and_sampling(server, monkeypatch):
    backend = _backend(server, monkeypatch)
    sampling = SamplingConfig(temperature=0.6, top_p=0.9, max_new_tokens=20, seed=7)
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    out = backend.generate(convs, sampling, n=2)
    assert [[c.text for c in cs] for cs in out] == [
        [f"question {i} -> answer 0", f"question {i} -> answer 1"] for i in range(6)
    ]
    assert [c.finish_reason for c in out[0]] == ["stop", "length"]
    assert all(sum(c.n_tokens for c in cs) == 14 for cs in out)
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test-123"
    assert (req["model"], req["n"], req["temperature"], req["top_p"], req["max_tokens"], req["seed"]) == (
        "served-model",
        2,
        0.6,
        0.9,
        20,
        7,
    )
    assert backend.requests_sent == 6


def test_retries_429_500_and_timeouts(server, monkeypatch):
    backend = _backend(server, monkeypatch)
    convs = [[{"role": "user", "content": p}] for p in ("429 then ok", "500 twice", "slow once", "fine", "empty")]
    start = time.perf_counter()
    out = backend.generate(convs, SamplingConfig(max_new_tokens=5), n=1)
    assert [cs[0].text for cs in out[:4]] == [
        f"{p} -> answer 0" for p in ("429 then ok", "500 twice", "slow once", "fine")
    ]
    assert out[4][0].text == "" and out[4][0].finish_reason == "stop"
    assert server.attempts == {"429 then ok": 2, "500 twice": 3, "slow once": 2, "fine": 1, "empty": 1}
    assert backend.requests_sent == 9
    assert time.perf_counter() - start >= 0.3  # Retry-After was honoured


def test_gives_up_with_a_catchable_error(server, monkeypatch):
    backend = _backend(server, monkeypatch, max_retries=2)
    with pytest.raises(BackendRequestError, match="after 3 attempts.*503"):
        backend.generate([[{"role": "user", "content": "always 503"}]], SamplingConfig(), n=1)
    assert server.attempts["always 503"] == 3
    with pytest.raises(BackendRequestError, match="HTTP 400"):
        backend.generate([[{"role": "user", "content": "bad request"}]], SamplingConfig(), n=1)
    assert server.attempts["bad request"] == 1  # client errors are not retried


def test_connection_refused_is_retried_then_raised(monkeypatch):
    backend = OpenAIBackend("m", "http://127.0.0.1:9/v1", api_key_env=None, max_retries=2, backoff_s=0.01)
    with pytest.raises(BackendRequestError, match="ConnectError"):
        backend.generate([[{"role": "user", "content": "hi"}]], SamplingConfig(), n=1)
    assert backend.requests_sent == 3


# --- servers that ignore `n` ------------------------------------------------------------------


def test_server_ignoring_n_gets_one_request_per_sample_with_distinct_seeds(monkeypatch, caplog):
    with ChatServer(ignore_n=True) as server:
        backend = _backend(server, monkeypatch, max_concurrency=1)
        convs = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
        with caplog.at_level(logging.WARNING, logger="factory.generation.openai_backend"):
            out = backend.generate(convs, SamplingConfig(seed=7), n=3)
    assert [[c.text for c in cs] for cs in out] == [
        [f"question {i} -> answer 0 (seed {s})" for s in (7, 8, 9)] for i in range(3)
    ]
    seeds = {f"question {i}": [r["seed"] for r in server.requests if r["messages"][-1]["content"] == f"question {i}"]
             for i in range(3)}  # fmt: skip
    assert seeds == {f"question {i}": [7, 8, 9] for i in range(3)}
    # only the first request asked for n=3; once seen ignoring it, the backend asks for one sample at a time
    assert [r.get("n") for r in server.requests] == [3] + [None] * 8
    warnings = [r.getMessage() for r in caplog.records if "ignores `n`" in r.getMessage()]
    assert len(warnings) == 1 and "3 requests per prompt" in warnings[0]


def test_identical_samples_from_a_greedy_server_are_warned_about_once(monkeypatch, caplog):
    with ChatServer(ignore_n=True) as server:  # "greedy" prompts: the same answer whatever the seed
        backend = _backend(server, monkeypatch, max_concurrency=1)
        convs = [[{"role": "user", "content": f"greedy question number {i}"}] for i in range(2)]
        with caplog.at_level(logging.WARNING, logger="factory.generation.openai_backend"):
            out = backend.generate(convs, SamplingConfig(seed=7, temperature=0.8), n=2)
            backend.generate([[{"role": "user", "content": "a varied question"}]], SamplingConfig(seed=7), n=2)
    assert all(len({c.text for c in cs}) == 1 for cs in out)
    warnings = [r.getMessage() for r in caplog.records if "came back identical" in r.getMessage()]
    assert len(warnings) == 1 and "do_sample" in warnings[0]


# --- API key ------------------------------------------------------------------------------------


def test_missing_api_key_is_warned_about_once_naming_the_variable(server, monkeypatch, caplog):
    monkeypatch.delenv("UNSET_TEACHER_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="factory.generation.openai_backend"):
        backend = OpenAIBackend("m", server.url, api_key_env="UNSET_TEACHER_KEY")
        backend.generate([[{"role": "user", "content": "fine"}]] * 2, SamplingConfig(), n=1)
        OpenAIBackend("m", server.url, api_key_env=None)  # no key wanted: nothing to warn about
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "UNSET_TEACHER_KEY" in warnings[0] and "no Authorization header" in warnings[0]
    assert [r["auth"] for r in server.requests] == [None, None]


# --- total deadline -----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["trickle body", "trickle headers"])
def test_timeout_is_a_deadline_for_the_whole_request(server, monkeypatch, prompt):
    backend = _backend(server, monkeypatch, timeout_s=1.0, max_retries=0)
    start = time.perf_counter()
    with pytest.raises(BackendRequestError, match="no complete response within timeout_s=1"):
        backend.generate([[{"role": "user", "content": prompt}]], SamplingConfig(), n=1)
    # every byte arrives within a per-read timeout, and the server would go on for 30 s
    assert time.perf_counter() - start < 10


# --- circuit breaker ----------------------------------------------------------------------------


def test_circuit_opens_after_consecutive_failures_and_fails_the_rest_fast():
    backend = OpenAIBackend("m", "http://127.0.0.1:9/v1", api_key_env=None, max_concurrency=2, max_retries=5,
                            backoff_s=0.01, circuit_failures=5)  # fmt: skip
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    with pytest.raises(BackendRequestError) as caught:
        backend.generate(convs, SamplingConfig(), n=1)
    rows = caught.value.rows
    assert all(isinstance(r, str) for r in rows)
    assert sum("circuit open after" in r for r in rows) >= 5 and all("ConnectError" in r for r in rows)
    # 6 prompts x 6 attempts would be 36; the breaker stops after 5 (plus what was already in flight)
    assert 5 <= backend.requests_sent <= 5 + backend.max_concurrency


def test_circuit_probes_after_cooldown_and_closes_on_success(server, monkeypatch):
    backend = _backend(server, monkeypatch, max_retries=1)
    backend.circuit_failures, backend.circuit_cooldown_s = 2, 0.3
    with pytest.raises(BackendRequestError, match="after 2 attempts.*503"):
        backend.generate([[{"role": "user", "content": "always 503"}]], SamplingConfig(), n=1)
    sent = backend.requests_sent
    with pytest.raises(BackendRequestError, match="circuit open after 2 consecutive failures: HTTP 503"):
        backend.generate([[{"role": "user", "content": "fine"}]], SamplingConfig(), n=1)
    assert backend.requests_sent == sent  # failed without calling the server
    time.sleep(0.4)
    out = backend.generate([[{"role": "user", "content": "fine"}]] * 3, SamplingConfig(), n=1)
    assert [cs[0].text for cs in out] == ["fine -> answer 0"] * 3


def test_client_errors_do_not_open_the_circuit(server, monkeypatch):
    backend = _backend(server, monkeypatch)
    backend.circuit_failures = 2
    convs = [[{"role": "user", "content": f"bad request {i}"}] for i in range(4)]
    with pytest.raises(BackendRequestError) as caught:
        backend.generate(convs, SamplingConfig(), n=1)
    assert all("HTTP 400" in r and "circuit" not in r for r in caught.value.rows)
    assert backend.generate([[{"role": "user", "content": "fine"}]], SamplingConfig(), n=1)[0][0].text


def test_runner_quarantines_every_prompt_of_a_dead_server_fast(tmp_path):
    cfg = TeacherConfig(name="dead", backend="openai", model="m", api_base="http://127.0.0.1:9/v1",
                        api_key_env=None, max_concurrency=2, max_retries=5, batch_size=3)  # fmt: skip
    backend = make_backend(cfg)
    backend.backoff_s = 0.01
    prompts = make_prompts(6)
    generations, quarantine = generate_completions(prompts, [(cfg, backend)], 2, tmp_path, "run", progress=False)
    assert generations.height == 0 and quarantine.height == 6
    assert all(re.search(r"circuit open after \d+ consecutive failures: ConnectError", r) for r in quarantine["reason"])
    assert backend.requests_sent <= 5 + cfg.max_concurrency


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["echo secrets", "echo secrets 500"])
def test_secrets_echoed_by_the_server_are_redacted(server, monkeypatch, caplog, prompt):
    backend = _backend(server, monkeypatch, max_retries=2)
    backend.circuit_failures = 2  # so the breaker logs the last error too
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendRequestError) as caught:
        backend.generate([[{"role": "user", "content": prompt}]] * 2, SamplingConfig(), n=1)
    texts = [str(caught.value), *caught.value.rows, caplog.text]
    assert "HTTP 4" in texts[1] or "HTTP 5" in texts[1]
    for text in texts:
        # the key straddles the 200-character cut of the body: no prefix of it may survive either
        assert "sk-test" not in text and "Bearer sk" not in text
    assert "invalid key [REDAC" in texts[1]  # redacted, then cut at 200 characters
    if "500" in prompt:
        assert "circuit open" in caplog.text


def test_redact_covers_the_key_authorization_bearer_and_url_passwords():
    text = 'key sk-abc; {"Authorization": "Bearer tok.en-1"}; authorization=Basic dXNlcg==; bearer xyz http://u:pw@h/v1'
    out = redact(text, ("sk-abc",))
    for secret in ("sk-abc", "tok.en-1", "dXNlcg==", "xyz", ":pw@"):
        assert secret not in out
    assert out.count("[REDACTED]") == 5 and "http://u:[REDACTED]@h/v1" in out


# --- every caller quarantines per row -----------------------------------------------------------


def test_generate_per_row_isolates_the_failing_conversation():
    backend = EchoBackend("echo", fail_on="poison")
    convs = [[{"role": "user", "content": t}] for t in ("a", "poison pill", "b")]
    out = generate_per_row(backend, convs, SamplingConfig(), n=2)
    assert [[c.text for c in cs] for cs in out] == [["echo:a#0", "echo:a#1"], ["", ""], ["echo:b#0", "echo:b#1"]]
    assert [c.finish_reason for c in out[1]] == ["error", "error"]
    assert out[1][0].error == "ConnectionError: boom on poison"


def test_generate_per_row_keeps_the_rows_the_openai_backend_answered(server, monkeypatch):
    backend = _backend(server, monkeypatch)
    convs = [[{"role": "user", "content": t}] for t in ("one", "bad request", "two")]
    out = generate_per_row(backend, convs, SamplingConfig(), n=1)
    assert [cs[0].text for cs in out] == ["one -> answer 0", "", "two -> answer 0"]
    assert "HTTP 400" in out[1][0].error
    assert server.attempts == {"one": 1, "bad request": 1, "two": 1}  # nothing asked twice


def test_native_vs_translated_quarantines_a_failed_request_and_keeps_the_other_rows(server, monkeypatch):
    backend = _backend(server, monkeypatch)
    texts = ["Wie geht es dir?", "bad request: Guten Morgen", "Was machst du?"]
    prompts = pl.DataFrame({"prompt_id": [f"p{i}" for i in range(3)], "text": texts})
    best = pl.DataFrame({"prompt_id": [f"p{i}" for i in range(3)], "language": ["de"] * 3,
                         "completion_id": [f"c{i}" for i in range(3)], "reward": [1.0] * 3,
                         "text": ["Gut.", "Morgen!", "Nichts."], "teacher": ["strong"] * 3})  # fmt: skip
    pairs, gens, quarantine = native_vs_translated(best, prompts, backend, backend, run_id="r")
    assert sorted(pairs["prompt_id"]) == ["p0", "p2"] and gens.height == 2
    assert quarantine["row_key"].to_list() == ["p1"]
    reason = quarantine["reason"][0]
    assert "translating the prompt to English failed" in reason and "HTTP 400" in reason


def test_llm_judges_quarantine_a_failed_request_per_row(server, monkeypatch):
    backend = _backend(server, monkeypatch)
    scorer = LLMJudgeScorer(backend)
    prompts = [[{"role": "user", "content": q}] for q in ("hi", "bad request", "yo")]
    verdicts = scorer.judge(prompts, ["fine. Score: 7", "fine. Score: 3", "fine. Score: 5"])
    assert [v.score for v in verdicts] == [7.0, None, 5.0]
    assert "HTTP 400" in verdicts[1].error and verdicts[0].error == ""

    judge = LLMJudge(backend)
    jp = [{"prompt_id": f"p{i}", "language": "en", "text": q} for i, q in enumerate(("hi", "bad request"))]
    out = judge.judge(jp, ["good [[A>B]]", "good [[A>B]]"], ["meh", "meh"])
    assert out[0].outcome != "unparsed"
    assert out[1].outcome == "unparsed" and "request failed" in out[1].explanation
    assert "HTTP 400" in out[1].explanation


@pytest.mark.parametrize("retries", [0, 2])
def test_runner_keeps_the_answered_rows_of_a_failed_batch_and_quarantines_the_400(server, tmp_path, retries):
    cfg = TeacherConfig(name="served", backend="openai", model="m", api_base=server.url, api_key_env=None,
                        batch_size=4, max_retries=1)  # fmt: skip
    backend = make_backend(cfg)
    backend.backoff_s = 0.01
    texts = ["hello one", "hello two", "bad request please", "hello three"]
    prompts = pl.DataFrame({"prompt_id": [f"p{i}" for i in range(4)], "language": ["en"] * 4, "text": texts})
    gens, quarantine = generate_completions(prompts, [(cfg, backend)], 2, tmp_path, "r", retries=retries,
                                            progress=False)  # fmt: skip
    assert sorted(gens["prompt_id"].unique()) == ["p0", "p1", "p3"] and gens.height == 3 * 2
    assert server.attempts == {t: 1 for t in texts}  # answered rows kept, not asked again; the 400 not retried
    assert quarantine["row_key"].to_list() == ["p2|served"]
    assert "HTTP 400" in quarantine["reason"][0] and "not retried" in quarantine["reason"][0]
    assert gens["prompt_id"].n_unique() + quarantine.height == prompts.height


def test_runner_asks_again_only_the_rows_that_failed_retryably(server, tmp_path):
    cfg = TeacherConfig(name="served", backend="openai", model="m", api_base=server.url, api_key_env=None,
                        batch_size=3, max_retries=0)  # fmt: skip
    backend = make_backend(cfg)
    backend.backoff_s = 0.01
    texts = ["fine one", "500 twice here", "fine two"]
    prompts = pl.DataFrame({"prompt_id": ["a", "b", "c"], "language": ["en"] * 3, "text": texts})
    gens, quarantine = generate_completions(prompts, [(cfg, backend)], 1, tmp_path, "r", retries=2, progress=False)
    assert sorted(gens["prompt_id"]) == ["a", "b", "c"] and quarantine.height == 0
    assert server.attempts == {"fine one": 1, "500 twice here": 3, "fine two": 1}


def test_a_password_in_api_base_is_sent_but_never_stored(server, tmp_path):
    import base64

    url = server.url.replace("http://", "http://alice:s3cret@")
    cfg = TeacherConfig(name="served", backend="openai", model="m", api_base=url, api_key_env=None, max_retries=0)
    prompts = pl.DataFrame({"prompt_id": ["a", "b"], "language": ["en"] * 2, "text": ["fine", "bad request"]})
    gens, quarantine = generate_completions(prompts, [(cfg, make_backend(cfg))], 1, tmp_path, "r", progress=False)
    assert gens.height == 1 and quarantine.height == 1
    # the full URL is used for requests (httpx sends its user-info as Basic auth) ...
    assert {r["auth"] for r in server.requests} == {"Basic " + base64.b64encode(b"alice:s3cret").decode()}
    # ... and stored nowhere: not in the model identity column, the ids' identity, the shards or the quarantine
    assert json.loads(gens["model"][0])["api_base"] == server.url
    assert model_identity(cfg)["api_base"] == server.url
    assert "s3cret" not in read_shards(tmp_path).write_csv()
    assert "s3cret" not in quarantine.write_csv()
    shown = without_api_base_userinfo({"teachers": [cfg.model_dump(mode="json")], "judge": {"api_base": url}})
    assert "s3cret" not in json.dumps(shown) and "alice" not in json.dumps(shown)
    assert without_userinfo("https://u@h:1/v1?q=1") == "https://h:1/v1?q=1" and without_userinfo("serve:x") == "serve:x"


def test_retry_after_reads_seconds_and_http_dates():
    from datetime import UTC, datetime

    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0.3 ", now) == 0.3
    assert parse_retry_after("Wed, 21 Oct 2026 07:30:00 GMT", now) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now) == 0.0  # already past
    assert parse_retry_after("-5", now) == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad, now) is None
    # a Retry-After longer than max_backoff_s is honoured, up to its own cap
    backend = OpenAIBackend("m", "http://127.0.0.1:9/v1", api_key_env=None)
    assert (backend.max_backoff_s, backend.max_retry_after_s) == (30.0, 300.0)
    assert make_backend(TeacherConfig(name="t", backend="openai", model="m", max_retry_after_s=60)).max_retry_after_s == 60
