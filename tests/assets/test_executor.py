"""`factory run --workers N`: Dagster runs in worker processes, language partitions in parallel,
the same tables as one worker, every run recorded in FACTORY_HOME/.dagster."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import dagster as dg
import pytest
from typer.testing import CliRunner

from assets.cli import app
from assets.run import Step, default_workers, run_steps
from warehouse.store import Warehouse

KEYS = {"prompts": "prompt_id", "generations": "completion_id", "scores": "completion_id"}


def _tables(home) -> dict:
    wh = Warehouse(home)
    out = {}
    for table, key in KEYS.items():
        df = wh.read_table(table)
        out[table] = (df.height, sorted(df[key]))
    return out


def _runs(home) -> list[dg.RunRecord]:
    return list(dg.DagsterInstance.from_config(str(home / ".dagster")).get_run_records())


@pytest.mark.slow
def test_two_workers_write_the_same_tables_as_one_and_overlap_their_runs(tmp_path):
    """The per-language stages of `+scores` (prompts, generations, scores) with 1 and 2 workers,
    from one copied base (the pool and the Arbiter, trained once: homes are movable)."""
    base = tmp_path / "base"
    out = CliRunner().invoke(app, ["run", "--select", "+arbiter", "--config", "tiny", "--home", str(base), "-w", "1"])
    assert out.exit_code == 0, out.output
    homes = {n: tmp_path / f"w{n}" for n in (1, 2)}
    for n, home in homes.items():
        shutil.copytree(base, home)
        out = CliRunner().invoke(app, ["run", "--select", "prompts,generations,scores", "--config", "tiny",
                                       "--home", str(home), "-w", str(n)])
        assert out.exit_code == 0, out.output
    one, two = (_tables(homes[n]) for n in (1, 2))
    for table in KEYS:
        assert one[table][0] == two[table][0] > 0, table
        assert one[table][1] == two[table][1], table

    before = {r.dagster_run.run_id for r in _runs(base)}
    records = [r for r in _runs(homes[2]) if r.dagster_run.run_id not in before]
    # one run per language: the chain's other inputs (the pool, the Arbiter) are outside the selection
    assert {r.dagster_run.job_name for r in records} == {"prompts__generations__scores"}
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == sorted(["en", "es", "de", "ja", "ru"])
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    pids = {r.dagster_run.tags["factory/pid"] for r in records}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two worker processes ran them
    spans = sorted((r.start_time, r.end_time) for r in records)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), "no two runs overlapped"
    in_process = {r.dagster_run.tags["factory/pid"] for r in _runs(homes[1]) if r.dagster_run.run_id not in before}
    assert in_process == {str(os.getpid())}


def test_a_failure_in_a_worker_is_one_line_and_stops_the_plan(home):
    args = ["run", "--select", "generations,router", "-p", "es", "-p", "ja", "--home", str(home), "-w", "2"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1
    assert "Traceback" not in out.output and "has not been materialized" in out.output
    assert "generations [es] failed" in out.output or "generations [ja] failed" in out.output
    names = {r.dagster_run.job_name for r in _runs(home)}
    assert names == {"generations"}  # router never started
    assert CliRunner().invoke(app, [*args[:-2], "-w", "0"]).exit_code == 2  # at least one worker


def test_a_dead_worker_fails_its_step_and_starts_nothing_more():
    steps = [Step(["a"], "es"), Step(["b"], None, frozenset({0}))]

    def submit(step):
        future = Future()
        future.set_exception(BrokenProcessPool("gone"))
        return future

    failure = run_steps(steps, submit, 2, lambda s: None, lambda s, o: None)
    assert failure.failure[:2] == ("a [es]", "its worker process died (killed, or out of memory)")
    assert failure.run_id == ""
    assert default_workers() >= 1


def test_a_step_job_is_rebuilt_from_its_config_and_home_alone(tmp_path):
    """What a worker (or a run pod) does: rebuild the job from (config, home), whatever the env says."""
    config = tmp_path / "two.yaml"
    config.write_text("languages: [de, ja]\n")
    code = (
        "import json, sys\n"
        "from assets.run import step_job\n"
        "job = step_job(sys.argv[1], sys.argv[2], [['generations__scores', ['generations', 'scores']]], 'generations__scores')\n"
        "print(json.dumps([job.name, job.partitions_def.get_partition_keys()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FACTORY_CONFIG", "FACTORY_HOME", "DAGSTER_HOME")}
    out = subprocess.run([sys.executable, "-c", code, str(config), str(tmp_path / "h")], env=env,
                         capture_output=True, text=True, check=True)
    name, partitions = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "generations__scores" and partitions == ["de", "ja"]
