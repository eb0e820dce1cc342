from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from factory.generation.base import SamplingConfig
from factory.generation.openai_backend import BackendRequestError, OpenAIBackend
from factory.generation.registry import TeacherConfig, make_backend


class ChatServer:
    """A real chat-completions server on 127.0.0.1 with scripted failures per prompt.

    Prompt content decides the behaviour: "429 then ok" fails once with 429 and
    Retry-After, "500 twice" fails twice with 500, "slow once" sleeps past the
    client timeout once, "always 503" never succeeds, "bad request" gets a 400.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
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
                if "slow once" in prompt and attempt == 1:
                    time.sleep(1.0)
                choices = [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": "" if "empty" in prompt else f"{prompt} -> answer {i}",
                        },
                        "finish_reason": "length" if i == 1 else "stop",
                    }
                    for i in reversed(range(body.get("n", 1)))  # out of order on purpose
                ]
                usage = {"prompt_tokens": 5, "completion_tokens": 7 * body.get("n", 1), "total_tokens": 0}
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
