"""Generation and scoring as Ray Data pipelines: Parquet in, the project's backends as actor pools.

The same work as the in-process path, cut the same way and written to the same places:

- generation: per teacher, `runner.plan_teacher` lists what is missing from the shard folder
  (the same completion ids); the todo of every teacher is written as one Parquet table sorted by
  teacher, read back with `ray.data.read_parquet`, and `map_batches` hands `batch_size` prompts at
  a time to an actor pool (each actor holds one teacher at a time, built with
  `registry.make_backend`); each batch is answered and written as one shard by
  `runner.answer_chunk`, so a killed job resumes where it stopped.
- scoring: `score.uncached` lists the completions whose reward is not in the score cache; an actor
  pool of the reward model (`SequenceClassifierScorer`) scores them into the cache with
  `score.score_into_cache`.

The step then runs the in-process function over the same folders, which finds the work done: its
rows, ids, quarantine and z-scores are computed by the one code path. What the job could not do (a
prompt a teacher kept failing on, a non-finite reward) is tried once more there and quarantined
with the same reason.

Ray is an optional extra (`pip install aya-factory[ray]`) and is imported inside the functions.
`ray.data.llm`'s vLLM and HTTP processors are the production alternative for served or GPU
teachers (docs/SCALING.md); the transformers, vllm and openai backends run here as they are.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from factory.generation.registry import TeacherConfig, make_backend
from factory.generation.runner import (
    answer_chunk,
    check_teacher_names,
    plan_teacher,
    prompt_records,
    read_shards,
)
from factory.scoring.score import score_into_cache, uncached
from factory.scoring.sequence_classifier import SequenceClassifierConfig
from warehouse.home import open_work_dir


class RayConfig(BaseModel):
    """Where and how wide the Ray engine runs (`generation.engine: ray`, `scoring.engine: ray`)."""

    model_config = ConfigDict(extra="forbid")

    # The cluster's job-submission (dashboard) URL, e.g. http://head:8265. None: $RAY_ADDRESS, else a
    # local cluster started for the step (loopback only; see docs/SCALING.md about namespaces).
    address: str | None = None
    workers: int = Field(1, ge=1)  # actors per pool (per teacher, and for the reward model)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    local_cpus: int | None = Field(None, ge=1)  # a local cluster's CPUs (default: all)
    object_store_mb: int = Field(200, ge=64)  # a local cluster's object store


def _worker_threads(cpus: float) -> None:
    """Torch threads of an actor = its CPUs (Ray sets OMP_NUM_THREADS, torch may not follow it)."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))


class TeacherWorker:
    """A Ray Data actor of the teacher pool: answers todo batches and writes their shards. The todo
    comes sorted by teacher, so an actor holds one teacher's backend at a time (built by
    make_backend when its first batch arrives, dropped when the next teacher's does)."""

    def __init__(self, teachers: list[list], k: int, retries: int, shard_dir: str, run_id: str, cpus: float = 1.0):
        _worker_threads(cpus)
        self.teachers = {TeacherConfig.model_validate(t).name: (TeacherConfig.model_validate(t),
                                                                  TeacherConfig.model_validate(b), m)
                         for t, b, m in teachers}  # fmt: skip
        self.k, self.retries, self.shard_dir, self.run_id = k, retries, Path(shard_dir), run_id
        self.loaded: tuple[str, Any] | None = None

    def backend(self, teacher: str):
        if self.loaded is None or self.loaded[0] != teacher:
            self.loaded = None  # free the previous teacher's weights first
            self.loaded = (teacher, make_backend(self.teachers[teacher][1]))
        return self.loaded[1]

    def __call__(self, batch):
        import pyarrow as pa

        out: dict[str, list] = {"teacher": [], "prompts": [], "rows": [], "failed": [], "tokens": []}
        rows_by_teacher: dict[str, list] = {}
        for r in batch.to_pylist():
            rows_by_teacher.setdefault(r["teacher"], []).append(r)
        for teacher, rows in rows_by_teacher.items():  # a batch can straddle two teachers
            cfg, _, model_json = self.teachers[teacher]
            chunk = [({"prompt_id": r["prompt_id"], "language": r["language"], "text": r["text"]}, r["ids"], set(r["wanted"]))
                     for r in rows]  # fmt: skip
            written, failed = answer_chunk(self.backend(teacher), cfg, model_json, chunk, self.k, self.retries,
                                           self.shard_dir, self.run_id)  # fmt: skip
            for key, value in (("teacher", teacher), ("prompts", len(chunk)), ("rows", len(written)),
                               ("failed", len(failed)), ("tokens", sum(w["n_tokens"] for w in written))):  # fmt: skip
                out[key].append(value)
        return pa.table(out)


class ScorerWorker:
    """A Ray Data actor: one reward model, scoring batches of completions into the score cache."""

    def __init__(self, scorer: dict, cache_dir: str, cpus: float = 1.0):
        _worker_threads(cpus)
        self.scorer = SequenceClassifierConfig.model_validate(scorer).build()
        self.cache_dir = Path(cache_dir)

    def __call__(self, batch):
        import pyarrow as pa

        messages = [[{"role": "user", "content": p}] for p in batch["prompt"].to_pylist()]
        fresh = score_into_cache(self.scorer, batch["score_key"].to_pylist(), messages, batch["text"].to_pylist(),
                                 self.cache_dir)  # fmt: skip
        bad = sum(1 for r, _ in fresh.values() if r is None or not math.isfinite(float(r)))
        return pa.table({"scorer": [self.scorer.name], "scored": [len(fresh)], "not_cached": [bad]})


def _pool_args(ray_cfg: RayConfig) -> dict[str, Any]:
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(size=ray_cfg.workers), "num_cpus": ray_cfg.cpus_per_worker,
            "num_gpus": ray_cfg.gpus_per_worker, "batch_format": "pyarrow"}  # fmt: skip


def _read(path: Path, rows_per_block: int):
    """A Parquet file as a Ray dataset cut into blocks of `rows_per_block`, so every actor gets work.
    Read before the actor pool starts: on a small cluster the pool takes every CPU, and read tasks
    queued behind it would wait for ever (the todo is prompts and texts: small next to the models)."""
    import ray.data

    return ray.data.read_parquet(str(path)).repartition(target_num_rows_per_block=max(1, rows_per_block)).materialize()


def generate_on_ray(
    prompts_path: str | Path,
    teachers: list[tuple[TeacherConfig, TeacherConfig]],
    k: int,
    shard_dir: str | Path,
    run_id: str,
    retries: int,
    ray_cfg: RayConfig,
    scratch: str | Path,
) -> dict[str, Any]:
    """Answer what is missing from `shard_dir` for every (teacher as its ids name it, teacher as
    make_backend builds it) on the connected Ray cluster. Returns a summary (counts per teacher).

    One todo table for all teachers (sorted by teacher), read once and cut into blocks of the
    teachers' batch size: each fixed cost of a Ray dataset (a read, an actor pool) is paid once."""
    import ray

    check_teacher_names([t.name for t, _ in teachers])
    shard_dir, scratch = open_work_dir(Path(shard_dir)), Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    records = prompt_records(pl.read_parquet(prompts_path))
    done = set(read_shards(shard_dir)["completion_id"].to_list())
    summary: dict[str, Any] = {"prompts": len(records), "workers": ray_cfg.workers,
                               "teachers": {t.name: {"prompts": 0, "rows": 0, "failed": 0, "tokens": 0} for t, _ in teachers}}
    start = time.perf_counter()
    todo_rows, pool = [], []
    for cfg, build in teachers:
        todo, _, model_json = plan_teacher(records, cfg, k, done)
        todo_rows += [{"teacher": cfg.name, **p, "ids": ids, "wanted": sorted(wanted)} for p, ids, wanted in todo]
        pool.append([cfg.model_dump(mode="json"), build.model_dump(mode="json"), model_json])
    if todo_rows:
        path = scratch / "generation-todo.parquet"
        pl.DataFrame(todo_rows, schema={
            "teacher": pl.String, "prompt_id": pl.String, "language": pl.String, "text": pl.String,
            "ids": pl.List(pl.String), "wanted": pl.List(pl.String),
        }).write_parquet(path)  # fmt: skip
        size = max(1, min(t.batch_size for t, _ in teachers))
        out = _read(path, size).map_batches(
            TeacherWorker, batch_size=size, **_pool_args(ray_cfg),
            fn_constructor_kwargs={"teachers": pool, "k": k, "retries": retries, "shard_dir": str(shard_dir),
                                   "run_id": run_id, "cpus": ray_cfg.cpus_per_worker},
        ).to_arrow_refs()  # fmt: skip
        batches = pl.concat([pl.from_arrow(t) for t in ray.get(out)])
        for row in batches.group_by("teacher").agg(pl.exclude("teacher").sum()).iter_rows(named=True):
            summary["teachers"][row["teacher"]] = {c: int(row[c]) for c in ("prompts", "rows", "failed", "tokens")}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["rows"] = sum(t["rows"] for t in summary["teachers"].values())
    return summary


def score_on_ray(
    generations_path: str | Path,
    prompts_path: str | Path,
    scorers: list[SequenceClassifierConfig],
    cache_dir: str | Path,
    ray_cfg: RayConfig,
    scratch: str | Path,
) -> dict[str, Any]:
    """Score what is missing from the score cache for every reward model on the connected Ray
    cluster (the step's score_generations then reads it from the cache). Returns a summary."""
    gens, prompts = pl.read_parquet(generations_path), pl.read_parquet(prompts_path)
    cache_dir, scratch = open_work_dir(Path(cache_dir)), Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"completions": gens.height, "scorers": {}, "workers": ray_cfg.workers}
    start = time.perf_counter()
    for i, spec in enumerate(scorers):
        scorer = spec.build()  # cheap: the weights are loaded on first score, never here
        todo = uncached(gens, prompts, scorer.identity, cache_dir)
        if not todo.height:
            summary["scorers"][scorer.name] = {"scored": 0, "not_cached": 0}
            continue
        path = scratch / f"score-todo-{i}.parquet"
        todo.write_parquet(path)
        per_block = max(spec.batch_size, math.ceil(todo.height / ray_cfg.workers))
        out = _read(path, per_block).map_batches(
            ScorerWorker, batch_size=per_block, **_pool_args(ray_cfg),
            fn_constructor_kwargs={"scorer": spec.model_dump(mode="json"), "cache_dir": str(cache_dir),
                                   "cpus": ray_cfg.cpus_per_worker},
        ).to_arrow_refs()  # fmt: skip
        import ray

        batches = pl.concat([pl.from_arrow(t) for t in ray.get(out)])
        summary["scorers"][scorer.name] = {c: int(batches[c].sum()) for c in ("scored", "not_cached")}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a job spec written by the step ({"stage": "generations" | "scores", ...}, see ray_job)."""
    ray_cfg = RayConfig.model_validate(spec["ray"])
    if spec["stage"] == "generations":
        teachers = [(TeacherConfig.model_validate(t), TeacherConfig.model_validate(b)) for t, b in spec["teachers"]]
        return generate_on_ray(spec["prompts"], teachers, spec["k"], spec["shard_dir"], spec["run_id"], spec["retries"],
                               ray_cfg, spec["scratch"])  # fmt: skip
    if spec["stage"] == "scores":
        scorers = [SequenceClassifierConfig.model_validate(s) for s in spec["scorers"]]
        return score_on_ray(spec["generations"], spec["prompts"], scorers, spec["cache_dir"], ray_cfg, spec["scratch"])
    raise ValueError(f"unknown Ray job stage {spec['stage']!r}; expected generations or scores")


def write_spec(path: str | Path, spec: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(spec, sort_keys=True, indent=1))
    return path
