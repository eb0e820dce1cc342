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
