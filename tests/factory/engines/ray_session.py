"""The Ray test's work, run inside a fresh network and PID namespace by test_ray_engine.py:

    unshare -n -p -f --mount-proc -- python tests/factory/engines/ray_session.py OUT

Only `lo` exists there (brought up here), so no Ray port can listen beyond loopback, and every
process started here dies with the namespace. Ray runs with token auth (a token generated into a
scratch HOME, RAY_AUTH_MODE=token). Steps, on the tiny profile and one language partition:

1. build the upstream assets (prompts of every language, embedded pool, Arbiter) in OUT/ray_home;
2. copy it to OUT/ref_home and run generations and scores in-process there;
3. copy one generation shard of that run into OUT/ray_home (as a killed run would have left it);
4. start one Ray head (2 CPUs, 200 MB object store, job server on 127.0.0.1) and run generations
   and scores with engine: ray in OUT/ray_home: it must resume from that shard and make the rest.

OUT/steps.json records each step's return code and the listening sockets seen while Ray ran.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

PARTITION = "ja"
RAY_PORT = 8265


def loopback_up() -> None:
    """`ip link set lo up` without needing the `ip` tool (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        flags = struct.unpack("16sH", fcntl.ioctl(sock, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))  # IFF_UP
    finally:
        sock.close()


def listening() -> list[str]:
    """Local addresses of every listening TCP socket in this namespace (hex from /proc/net/tcp*)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found.append(fields[1])
    return found


def ray_config(out: Path) -> Path:
    """The tiny profile with generation and scoring on Ray (the cluster this script starts)."""
    from assets.config import config_path

    text = config_path("tiny").read_text()
    path = out / "tiny-ray.yaml"
    path.write_text(text.replace("generation:\n  k: 2\n", "generation:\n  k: 2\n  engine: ray\n")
                    + f"scoring: {{engine: ray}}\nray: {{address: 'http://127.0.0.1:{RAY_PORT}', workers: 2}}\n")
    return path


def main(out: Path) -> int:
    loopback_up()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "HOME": str(out / "scratch_home"), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    steps: dict = {}

    def step(name: str, *args: str) -> bool:
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.call(list(args), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out, timeout=600)
        steps[name] = rc
        (out / "steps.json").write_text(json.dumps(steps, indent=1))
        return rc == 0

    factory = str(bin_dir / "factory")
    ray_home, ref_home = out / "ray_home", out / "ref_home"
    run = [factory, "run", "--workers", "1", "--partition", PARTITION]
    upstream = ["--config", "tiny", "--home", str(ray_home), "--select", "+arbiter,prompts"]  # every language: the Arbiter needs them
    ok = step("upstream", factory, "run", "--workers", "1", *upstream)
    if ok:
        shutil.copytree(ray_home, ref_home, symlinks=True)
        ok = step("in_process", *run, "--config", "tiny", "--home", str(ref_home), "--select", "generations,scores")
    if ok:  # one shard of the in-process run, as if a killed Ray run had written it: the Ray run resumes from it
        import polars as pl

        shard_dir = Path("staging", "generations", f"language={PARTITION}")
        shard = sorted((ref_home / shard_dir).glob("*.parquet"))[0]
        (ray_home / shard_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shard, ray_home / shard_dir / shard.name)
        steps["resumed"] = pl.read_parquet(shard)["completion_id"].to_list()
    if ok:
        ok = step("ray_token", str(bin_dir / "ray"), "get-auth-token", "--generate")
    if ok:
        ok = step("ray_start", str(bin_dir / "ray"), "start", "--head", "--num-cpus=2", "--object-store-memory=200000000",
                  "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={RAY_PORT}",
                  "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={out / 'ray_tmp'}")  # fmt: skip
    if ok:
        steps["listening"] = listening()
        ok = step("ray_run", *run, "--config", str(ray_config(out)), "--home", str(ray_home), "--select", "generations,scores")
    subprocess.call([str(bin_dir / "ray"), "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (out / "steps.json").write_text(json.dumps(steps, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
