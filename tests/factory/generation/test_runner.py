from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from factory.generation.base import SamplingConfig
from factory.generation.registry import TeacherConfig, model_identity
from factory.generation.runner import generate_completions, read_shards
from factory.ids import completion_id
from warehouse.schemas import GENERATIONS

from .fakes import EchoBackend, make_prompts

ROOT = Path(__file__).resolve().parents[3]
N_PROMPTS, K = 12, 2


def _teachers(sleep_s: float = 0.0):
    sampling = SamplingConfig(temperature=0.7, seed=1)
    cfgs = [TeacherConfig(name=n, model=f"fake-{n}", batch_size=2, sampling=sampling) for n in ("alpha", "beta")]
    return [(c, EchoBackend(c.name, sleep_s)) for c in cfgs]


def _expected_ids(prompts: pl.DataFrame, teachers) -> set[str]:
    return {
        completion_id(pid, cfg.name, cfg.sampling.key(), i, model=model_identity(cfg))
        for cfg, _ in teachers
        for pid in prompts["prompt_id"]
        for i in range(K)
    }


SCRIPT = """
import sys
from pathlib import Path
from tests.factory.generation.test_runner import _teachers, N_PROMPTS, K
from tests.factory.generation.fakes import make_prompts
from factory.generation.runner import generate_completions
generate_completions(make_prompts(N_PROMPTS), _teachers(sleep_s=0.25), K, Path(sys.argv[1]), "run-killed", progress=False)
print("FINISHED")
"""


def test_killed_run_resumes_exactly_the_missing_work(tmp_path):
    shards = tmp_path / "shards"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(shards)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while time.time() < deadline and not list(shards.glob("*.parquet")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    before = read_shards(shards)
    total = N_PROMPTS * K * 2
    assert 0 < before.height < total, "the kill must land mid-run"
    assert before.filter(pl.col("run_id") == "run-killed").height == before.height

    prompts, teachers = make_prompts(N_PROMPTS), _teachers()
    gens, quarantine = generate_completions(prompts, teachers, K, shards, "run-resume", progress=False)
    expected = _expected_ids(prompts, teachers)
    assert set(gens["completion_id"]) == expected
    assert gens["completion_id"].n_unique() == gens.height == total
    assert quarantine.height == 0
    # the rerun generated only what the killed run had not: per teacher, missing prompts only
    for cfg, backend in teachers:
        had = before.filter(pl.col("teacher") == cfg.name)["prompt_id"].unique().to_list()
        assert len(backend.prompts_seen) == N_PROMPTS - len(had)
        assert not set(backend.prompts_seen) & set(prompts.filter(pl.col("prompt_id").is_in(had))["text"])
    assert set(gens.filter(pl.col("run_id") == "run-killed")["completion_id"]) == set(before["completion_id"])
    assert not list(shards.glob(".*.tmp"))

    # a third run has nothing left to do
    again = _teachers()
    gens2, _ = generate_completions(prompts, again, K, shards, "run-3", progress=False)
    assert sum(len(b.prompts_seen) for _, b in again) == 0
    assert gens2.sort("completion_id").equals(gens.sort("completion_id"))


def test_rows_follow_the_generations_contract(tmp_path):
    prompts, teachers = make_prompts(3), _teachers()
    gens, _ = generate_completions(prompts, teachers, K, tmp_path, "r1", progress=False)
    assert list(gens.columns[: len(GENERATIONS)]) == list(GENERATIONS)
    row = (
        gens.filter((pl.col("teacher") == "beta") & (pl.col("sample_index") == 1)).sort("prompt_id").row(0, named=True)
    )
    assert row["text"] == f"beta:{prompts.filter(pl.col('prompt_id') == row['prompt_id'])['text'][0]}#1"
    assert row["backend"] == "transformers"
    assert json.loads(row["sampling"]) == teachers[1][0].sampling.key()
    beta = teachers[1][0]
    assert row["completion_id"] == completion_id(
        row["prompt_id"], "beta", beta.sampling.key(), 1, model=model_identity(beta)
    )
    assert json.loads(row["model"]) == {"backend": "transformers", "model": "fake-beta"}
    assert len(list(tmp_path.glob("*.parquet"))) == 4  # one shard per batch of 2 prompts, per teacher


def test_failing_prompts_are_quarantined_and_other_answers_kept(tmp_path):
    prompts = make_prompts(5)
    sampling = SamplingConfig(seed=2)
    good = TeacherConfig(name="good", model="x", batch_size=4, sampling=sampling)
    bad = TeacherConfig(name="flaky", model="y", batch_size=4, sampling=sampling)
    bad_backend = EchoBackend("flaky", fail_on="number 3", empty_on="number 1")
    gens, quarantine = generate_completions(
        prompts, [(good, EchoBackend("good")), (bad, bad_backend)], K, tmp_path, "r1", retries=2, progress=False
    )
    assert gens.filter(pl.col("teacher") == "good").height == 5 * K
    flaky = gens.filter(pl.col("teacher") == "flaky")
    assert set(flaky["prompt_id"]) == set(prompts["prompt_id"]) - {prompts["prompt_id"][3]}
    empty = flaky.filter(pl.col("prompt_id") == prompts["prompt_id"][1])
    assert empty["text"].to_list() == ["", ""] and empty["finish_reason"].to_list() == ["stop", "stop"]
    assert quarantine.columns == ["row_key", "reason", "payload"]
    assert quarantine["row_key"].to_list() == [f"{prompts['prompt_id'][3]}|flaky"]
    assert "flaky" in quarantine["reason"][0] and "boom on number 3" in quarantine["reason"][0]
    payload = json.loads(quarantine["payload"][0])
    assert payload["text"] == "prompt number 3" and payload["teacher"] == "flaky"
    assert payload["missing_samples"] == list(range(K))
    # rows in = rows kept + quarantined, per teacher
    assert flaky["prompt_id"].n_unique() + quarantine.height == prompts.height
    # a rerun retries only the quarantined prompt
    retry_backend = EchoBackend("flaky")
    gens2, q2 = generate_completions(prompts, [(bad, retry_backend)], K, tmp_path, "r2", progress=False)
    assert retry_backend.prompts_seen == ["prompt number 3"] and q2.height == 0
    assert gens2.height == 5 * K


def test_duplicate_teacher_names_are_refused(tmp_path):
    cfg = TeacherConfig(name="same", model="x")
    with pytest.raises(ValueError, match="unique"):
        generate_completions(make_prompts(1), [(cfg, EchoBackend("a")), (cfg, EchoBackend("b"))], 1, tmp_path, "r")


def test_two_teachers_failing_on_one_prompt_get_distinct_quarantine_keys(tmp_path):
    prompts = make_prompts(2)
    cfgs = [TeacherConfig(name=n, model=n, batch_size=2) for n in ("x", "y")]
    teachers = [(c, EchoBackend(c.name, fail_on="number 1")) for c in cfgs]
    gens, quarantine = generate_completions(prompts, teachers, K, tmp_path, "r", retries=1, progress=False)
    pid = prompts["prompt_id"][1]
    assert sorted(quarantine["row_key"]) == [f"{pid}|x", f"{pid}|y"] and quarantine["row_key"].is_unique().all()
    assert gens.height + K * quarantine.height == prompts.height * len(cfgs) * K
