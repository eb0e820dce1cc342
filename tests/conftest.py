"""Test-wide settings: the tiny profile, a private home, quiet Dagster."""

import os

os.environ.setdefault("FACTORY_CONFIG", "tiny")
os.environ.pop("DAGSTER_HOME", None)  # tests use ephemeral Dagster instances
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402


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
