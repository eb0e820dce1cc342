"""What killed runs leave behind is cleaned at the next start: temp files and folders of dead
processes, and Dagster runs left STARTED forever."""

import os
import socket
import subprocess
import sys
import time
import uuid

import dagster as dg
from typer.testing import CliRunner

from assets.cli import app
from warehouse.housekeeping import clean_leftovers, describe_leftovers, find_leftovers, pid_alive


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _make(path, old: bool = False, folder: bool = False):
    target = path / "model.safetensors" if folder else path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x" * 1000)
    if old:
        then = time.time() - 2 * 3600
        for p in (target, path):
            os.utime(p, (then, then))
    return path


def _publish_temp(folder):
    _make(folder / "data" / "es" / "train-00000.parquet", old=True)
    then = time.time() - 2 * 3600
    for p in (folder / "data" / "es", folder / "data", folder):
        os.utime(p, (then, then))
    return folder


def test_pid_alive_tells_dead_live_and_reused_pids():
    assert pid_alive(os.getpid())
    assert not pid_alive(_dead_pid())
    assert not pid_alive(0) and not pid_alive(10**12)
    assert pid_alive(os.getpid(), since=time.time())
    # something written in 1970 was not written by this process: its pid is someone else's now
    assert not pid_alive(os.getpid(), since=0.0)


def test_leftovers_of_killed_processes_go_and_live_work_stays(tmp_path):
    home = tmp_path / "home"
    dead = _dead_pid()
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a pid started after the write
    try:
        gone = {
            _make(home / "models" / f".merged_model.tmp-{dead}", folder=True),  # merge killed mid-write
            _make(home / "models" / "sources" / f".record.json.{dead}.tmp"),
            _make(home / "models" / f".convert.tmp-{late.pid}", old=True, folder=True),  # pid reused since
            _make(home / "tables" / "prompts" / "language=es" / "part.parquet.tmp-1a2b3c4d", old=True),
            _make(home / "models" / "sft_model.tmp", old=True, folder=True),
            _publish_temp(home / "published" / ".preference_pairs.k3j2_9ab"),  # a publish killed mid-write
        }
        held = _make(home / "tables" / "scores" / "part.parquet.tmp-deadbeef", old=True)
        kept = {
            _make(home / "models" / f".dpo_model.tmp-{os.getpid()}", folder=True),  # a live merge
            _make(home / "tables" / "prompts" / "language=en" / "part.parquet.tmp-5e6f7a8b"),  # fresh
            held,  # old but still open by a writer
            _make(home / "models" / "sft_model.work" / "checkpoint-3", old=True, folder=True),  # resume state
            _make(home / "models" / "sft_model.old", old=True, folder=True),
            _make(home / ".dagster" / "storage" / "events.tmp", old=True),  # Dagster's own
            _make(home / "published" / ".notes.abcdefgh" / "mine.txt", old=True),  # not a publish temp folder
            _make(home / "reports" / "step_by_step.png", old=True),
        }
        with open(held, "rb"):
            assert {item.path for item in find_leftovers(home)} == gone
            removed = clean_leftovers(home)
        assert {item.path for item in removed} == gone
        assert not any(p.exists() for p in gone)
        assert all(p.exists() for p in kept)
        assert {item.path for item in find_leftovers(home)} == {held}  # closed now, and old
        assert clean_leftovers(home, max_age_s=10 * 3600) == []
    finally:
        late.kill()
        late.wait()


def test_the_report_is_one_line(tmp_path):
    home = tmp_path / "home"
    for i in range(5):
        _make(home / "models" / f".m{i}.tmp-{_dead_pid()}", folder=True)
    line = describe_leftovers(clean_leftovers(home), home)
    assert "\n" not in line
    assert line.startswith("removed 5 temp leftovers of killed runs (0.0 MB): models/.m") and line.endswith("and 2 more")


def test_a_run_removes_a_killed_merge_leftover_and_says_so(home):
    leftover = _make(home / "models" / f".merged_model.tmp-{_dead_pid()}", folder=True)
    out = CliRunner().invoke(app, ["run", "--select", "prompts", "--partition", "es", "--home", str(home)])
    assert out.exit_code == 0, out.output
    assert not leftover.exists()
    (line,) = [x for x in out.output.splitlines() if x.startswith("housekeeping:")]
    assert f"removed 1 temp leftover of killed runs (0.0 MB): models/{leftover.name}" in line


def _run(inst, pid: str | None, host: str | None = None) -> str:
    tags = {} if pid is None else {"factory/pid": pid, "factory/host": host or socket.gethostname()}
    run = dg.DagsterRun(job_name="prompts", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED, tags=tags)
    inst.add_run(run)
    return run.run_id


def test_a_run_killed_mid_way_is_marked_failed_at_the_next_start(home):
    from assets.run import instance

    inst = instance()
    killed = _run(inst, str(_dead_pid()))
    live = _run(inst, str(os.getpid()))  # another factory run still going
    untagged = _run(inst, None)  # e.g. `dagster dev`: its own run monitoring decides
    elsewhere = _run(inst, str(_dead_pid()), host="another-host")  # a shared home: not ours to judge
    out = CliRunner().invoke(app, ["run", "--select", "prompts", "--partition", "es", "--home", str(home)])
    assert out.exit_code == 0, out.output
    inst = dg.DagsterInstance.from_config(str(home / ".dagster"))
    status = {run_id: inst.get_run_by_id(run_id).status for run_id in (killed, live, untagged, elsewhere)}
    assert status == {
        killed: dg.DagsterRunStatus.FAILURE,
        live: dg.DagsterRunStatus.STARTED,
        untagged: dg.DagsterRunStatus.STARTED,
        elsewhere: dg.DagsterRunStatus.STARTED,
    }
    assert f"marked 1 run of killed processes as failed ({killed[:8]})" in out.output
    (new,) = [r for r in inst.get_runs() if r.job_name == "prompts" and r.run_id not in status]
    assert new.status == dg.DagsterRunStatus.SUCCESS
    assert new.tags["factory/pid"] == str(os.getpid()) and new.tags["factory/host"] == socket.gethostname()
