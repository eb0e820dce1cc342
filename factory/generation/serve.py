"""Serve a local model folder with `transformers serve`, the OpenAI-compatible server that ships
with transformers, on 127.0.0.1 and a free port: started, health-checked and stopped here, so a
run can put a real server behind its `openai` teachers without anyone starting one by hand.

`vllm serve`, TGI or llama.cpp speak the same protocol; in production point a teacher's
`api_base` at them instead (README, "Bring your own models and data").
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pydantic import Field

from factory.settings import Strict

log = logging.getLogger(__name__)

SERVE_PREFIX = "serve:"  # a teacher's api_base `serve:NAME` means "the server of serve entry NAME"


class ServerStartError(RuntimeError):
    """The server did not answer /health in time, or exited; the message carries its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """`transformers serve FOLDER` as a child process on 127.0.0.1. Use as a context manager;
    `api_base` is the `/v1` URL to give an OpenAI-compatible client."""

    def __init__(self, folder: str | Path, log_path: str | Path, device: str = "cpu", port: int | None = None,
                 startup_timeout_s: float = 180.0, threads: int | None = None):
        self.folder, self.log_path, self.device = str(folder), Path(log_path), device
        self.port = port or free_port()
        self.startup_timeout_s, self.threads = startup_timeout_s, threads
        self.proc: subprocess.Popen | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ModelServer:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        command = [sys.executable, "-m", "transformers.cli.transformers", "serve", self.folder,
                   "--host", "127.0.0.1", "--port", str(self.port), "--device", self.device]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ServerStartError(f"transformers serve exited ({self.proc.returncode}): {self._tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    log.info("serving %s at %s", self.folder, self.api_base)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(f"transformers serve gave no /health within {self.startup_timeout_s:.0f}s: {self._tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)

    def _tail(self, n: int = 800) -> str:
        try:
            return self.log_path.read_text()[-n:].strip()
        except OSError:
            return "(no log)"

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServedModel(Strict):
    """A model the run serves itself with `transformers serve` on 127.0.0.1 (a free port), for the
    teachers whose `api_base` is `serve:<name>`: started on first use in a step, stopped after it."""

    name: str
    model: str  # a folder, gguf:PATH or pkg:DIST/PATH
    device: str = "cpu"
    threads: int | None = None  # OMP threads of the server process
    startup_timeout_s: float = Field(180.0, gt=0)
