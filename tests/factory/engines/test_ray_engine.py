"""`engine: ray` for generations and scores gives the tables the in-process path gives.

One Ray head for the whole module, started inside a network and PID namespace (ray_session.py) so
that no Ray port listens beyond loopback, with token auth. The tiny profile, one language
partition: the same completion ids and counts as in-process, the same scores rows, and a Ray run
that finds a shard already written generates only the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.catalog import query as table

pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytest.importorskip("dagster_ray", reason="the [ray] extra is not installed")

pytestmark = pytest.mark.slow
SESSION = Path(__file__).with_name("ray_session.py")
NAMESPACE = ["unshare", "-n", "-p", "-f", "--mount-proc"]


def namespace_prefix() -> list[str]:
    """The unshare command that works here (as root, or through a user namespace), else skip saying why."""
    if shutil.which("unshare") is None:
        pytest.skip("Ray test needs `unshare` (util-linux) to run Ray inside a network namespace")
    errors = []
    for prefix in (NAMESPACE, [NAMESPACE[0], "-r", *NAMESPACE[1:]]):
        probe = subprocess.run([*prefix, "--", "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return prefix
        errors.append(f"`{' '.join(prefix)}`: {probe.stderr.strip() or probe.returncode}")
    reason = "cannot create a network namespace for Ray (" + "; ".join(errors) + ")"
    print(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray")
    prefix = namespace_prefix()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[3]), os.environ.get("PYTHONPATH", "")])}
    env.pop("FACTORY_HOME", None)
    proc = subprocess.run([*prefix, "--", sys.executable, str(SESSION), str(out)], env=env, timeout=1500)
    steps = json.loads((out / "steps.json").read_text()) if (out / "steps.json").exists() else {}
    failed = [name for name, rc in steps.items() if isinstance(rc, int) and rc != 0]
    if proc.returncode != 0 or failed:
        logs = "\n".join(f"--- {n}.log\n" + (out / f"{n}.log").read_text()[-3000:] for n in failed if (out / f"{n}.log").exists())
        pytest.fail(f"the Ray session failed at {failed or proc.returncode}:\n{logs}")
    return out


def test_ray_listens_on_loopback_only(session):
    steps = json.loads((session / "steps.json").read_text())
    assert steps["listening"], "Ray was running: its ports should be listed"
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    assert {addr.split(":")[0] for addr in steps["listening"]} <= loopback


def test_ray_generations_and_scores_match_in_process(session):
    ray_home, ref_home = session / "ray_home", session / "ref_home"
    gens = "select completion_id, prompt_id, teacher, sample_index from generations"
    ray_gens, ref_gens = table(ray_home, gens), table(ref_home, gens)
    assert ray_gens.height > 0
    assert sorted(ray_gens["completion_id"]) == sorted(ref_gens["completion_id"])
    per_teacher = "select teacher, count(*) n from generations group by teacher order by teacher"
    assert table(ray_home, per_teacher).equals(table(ref_home, per_teacher))
    scores = "select completion_id, scorer from scores order by completion_id, scorer"
    assert table(ray_home, scores).equals(table(ref_home, scores))
    quarantined = "select asset, count(*) n from quarantine group by asset order by asset"
    assert table(ray_home, quarantined).equals(table(ref_home, quarantined))


def test_ray_resume_generates_only_what_is_missing(session):
    steps = json.loads((session / "steps.json").read_text())
    in_process_run = table(session / "ref_home", "select distinct run_id from generations")["run_id"].to_list()
    gens = table(session / "ray_home", "select completion_id, run_id from generations")
    kept = gens.filter(pl.col("run_id").is_in(in_process_run))["completion_id"].to_list()
    assert steps["resumed"] and sorted(kept) == sorted(steps["resumed"])
    assert gens.filter(~pl.col("run_id").is_in(in_process_run))["run_id"].n_unique() == 1  # the Ray run made the rest
