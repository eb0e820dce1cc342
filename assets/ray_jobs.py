"""Launch glue for `engine: ray`: a generations or scores step runs its per-row work as a Ray job.

The step writes its inputs (Parquet) and a job spec under staging/ray/<run>/, submits
`python -m factory.engines.ray_job SPEC` through Dagster Pipes (dagster-ray's PipesRayJobClient,
a fresh client per materialization: one reused for a second run was seen to drop the Pipes
messages silently), and adds the job's report to the output metadata. The job writes the same
generation shards and score cache the in-process path writes, so the step then finishes with the
in-process functions, which find the work done (see factory/engines/ray_data.py).

The cluster: `ray.address` (its job-submission URL), else $RAY_ADDRESS, else a local cluster
started for the step and stopped after it (dashboard and every port on 127.0.0.1 as far as Ray
allows; run it inside a network namespace to be sure nothing listens beyond loopback).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import polars as pl

from assets.common import resolve_slot, serving
from assets.resources import FactoryResource, ModelServers
from factory.engines.ray_data import RayConfig, write_spec
from factory.generation.registry import DeferredBackend

# Env vars the job's processes should see as the step does (offline hubs, quiet tokenizers, the code).
FORWARDED_ENV = ("PYTHONPATH", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@contextmanager
def ray_cluster(ray_cfg: RayConfig) -> Iterator[str]:
    """The job-submission URL of the configured cluster, or of a local one started for the step."""
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        yield address if "://" in address else f"http://{address}"
        return
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ctx = ray.init(
        num_cpus=ray_cfg.local_cpus or os.cpu_count(), object_store_memory=ray_cfg.object_store_mb * 1024 * 1024,
        include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", log_to_driver=False,
    )  # fmt: skip  (the dashboard process is where Ray's job server lives)
    try:
        if not ctx.dashboard_url:
            raise RuntimeError("the local Ray cluster started without its job server (the dashboard process): "
                               "install the [ray] extra, which brings ray[default]")  # fmt: skip
        yield f"http://{ctx.dashboard_url}"
    finally:
        ray.shutdown()


def run_ray_job(context: dg.AssetExecutionContext, ray_cfg: RayConfig, spec: dict, scratch: Path) -> dict:
    """Submit the spec as a Ray job through Pipes and wait; returns the summary the job reported."""
    from dagster_ray import PipesRayJobClient

    path = write_spec(scratch / "spec.json", spec)
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    with ray_cluster(ray_cfg) as address:
        local = urlparse(address).hostname in LOOPBACK
        python = sys.executable if local else "python"  # a remote cluster runs its image's python
        client = PipesRayJobClient(address=address, poll_interval=0.5)  # a fresh client per run
        invocation = client.run(
            context=context,
            submit_job_params={"entrypoint": f"{python} -m factory.engines.ray_job {path}", "entrypoint_num_cpus": 0,
                               "runtime_env": {"env_vars": env}},
        )  # fmt: skip
    reported = invocation.get_custom_messages()
    if not reported:
        raise RuntimeError(f"the Ray job for {spec['stage']} finished without reporting through Pipes (spec {path})")
    summary = reported[-1]
    output = context.assets_def.get_output_name_for_asset_key(context.asset_key)  # scores also has check outputs
    context.add_output_metadata({"ray_job": dg.MetadataValue.json(summary)}, output_name=output)
    shutil.rmtree(scratch, ignore_errors=True)  # kept only when the job fails, to look into
    return summary


def ray_generations(
    context: dg.AssetExecutionContext, env: FactoryResource, servers: ModelServers | None, train: pl.DataFrame,
    pool: pl.DataFrame, shard_dir: Path,
) -> list:
    """Answer what is missing from `shard_dir` on Ray; returns the teachers for generate_completions
    (their backends are built only if something is still missing after the job)."""
    cfg, wh = env.settings(), env.warehouse()
    slots = [resolve_slot(t, pool, wh.home, serving(cfg, wh.home, servers)) for t in cfg.resolved_teachers()]
    scratch = wh.dir("staging", "ray", context.run_id, f"generations-{context.partition_key}")
    train.select("prompt_id", "language", "text").write_parquet(scratch / "prompts.parquet")
    run_ray_job(context, cfg.ray, {
        "stage": "generations", "prompts": str(scratch / "prompts.parquet"), "k": cfg.generation.k,
        "retries": cfg.generation.retries, "shard_dir": str(shard_dir), "run_id": context.run_id,
        "teachers": [[t.model_dump(mode="json"), b.model_dump(mode="json")] for t, b in slots],
        "ray": cfg.ray.model_dump(mode="json"), "scratch": str(scratch),
    }, scratch)  # fmt: skip
    return [(t, DeferredBackend(b)) for t, b in slots]


def ray_scores(
    context: dg.AssetExecutionContext, env: FactoryResource, generations: pl.DataFrame, prompts: pl.DataFrame,
    scorers: list, cache_dir: Path,
) -> None:
    """Score what is missing from `cache_dir` on Ray, for every reward-model scorer of `scorers`
    (those with a `config()`; an LLM judge has no cache and scores in the step)."""
    cfg, wh = env.settings(), env.warehouse()
    models = [s.config().model_dump(mode="json") for s in scorers if hasattr(s, "config")]
    if not models:
        return
    scratch = wh.dir("staging", "ray", context.run_id, f"scores-{context.partition_key}")
    generations.write_parquet(scratch / "generations.parquet")
    prompts.select("prompt_id", "text").write_parquet(scratch / "prompts.parquet")
    run_ray_job(context, cfg.ray, {
        "stage": "scores", "generations": str(scratch / "generations.parquet"),
        "prompts": str(scratch / "prompts.parquet"), "scorers": models, "cache_dir": str(cache_dir),
        "ray": cfg.ray.model_dump(mode="json"), "scratch": str(scratch),
    }, scratch)  # fmt: skip
