"""The OpenAI backend against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1.

`transformers serve` ignores `n` (it logs "Ignoring unsupported fields: {'n'}" and
answers one choice), which is exactly the case the backend must handle by asking
once per sample. Needs the serving extras (fastapi, uvicorn, openai).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from factory.generation.base import SamplingConfig
from factory.generation.openai_backend import OpenAIBackend

for module in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(module, reason="`transformers serve` needs fastapi, uvicorn and openai")

STARTUP_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(tiny_model_dir, tmp_path_factory):
    """The tiny random model, set to sample with its special tokens suppressed: greedy decoding of random
    weights repeats one special token, which decodes to an empty answer."""
    from transformers import AutoTokenizer, GenerationConfig

    folder = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = GenerationConfig.from_pretrained(folder)
    config.do_sample = True
    config.suppress_tokens = sorted(AutoTokenizer.from_pretrained(folder).all_special_ids)
    config.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def transformers_server(served_model, tmp_path_factory):
    """`transformers serve <folder>` on a free loopback port, offline; stopped (terminate, then kill) after."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(served_model),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]  # fmt: skip
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not healthy after {STARTUP_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_k_samples_per_prompt_from_a_server_that_ignores_n(transformers_server, served_model, caplog):
    backend = OpenAIBackend(str(served_model), f"{transformers_server}/v1", name="served", api_key_env=None,
                            max_concurrency=1, timeout_s=60, max_retries=1)  # fmt: skip
    convs = [[{"role": "user", "content": text}] for text in ("hello, how are you?", "bonjour, ça va?")]
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=6, seed=3)
    with caplog.at_level(logging.WARNING, logger="factory.generation.openai_backend"):
        out = backend.generate(convs, sampling, n=2)
    assert [len(cs) for cs in out] == [2, 2]
    assert all(c.text.strip() for cs in out for c in cs)
    # eos is suppressed, so every answer runs to max_tokens: the server honoured it and reported usage
    assert all((c.n_tokens, c.finish_reason) == (6, "length") for cs in out for c in cs)
    assert all(cs[0].text != cs[1].text for cs in out)  # seeds 3 and 4
    assert backend.supports_n is False
    assert sum("ignores `n`" in r.getMessage() for r in caplog.records) == 1
    # the same seeds give the same samples: seed + i reaches the server's sampler
    again = backend.generate(convs, sampling, n=2)
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in out]
