"""Generation + scoring + selection on the embedded pool: in-process vs Ray Data with 1 and 2 workers.

    .venv/bin/python benchmarks/bench_ray.py                      # tiny pool, every language, 3 rounds
    .venv/bin/python benchmarks/bench_ray.py --home HOME --rounds 2

The pool and the Arbiter come from a tiny-profile home (built once with `factory run --config tiny
--select +arbiter,prompts` into a temporary home unless --home names one). Every training prompt of
every language, `--repeat` times over (each copy's texts suffixed, so new prompt ids), is one
workload; the in-process path runs once on a few prompts before the clock (imports, first calls). Variants, each into fresh shard and cache folders so all the work is
done every time:

- `in_process`: generate_completions, score_generations, routing.select in this process (torch's
  default threads); `in_process_t1` the same with torch on 1 thread (as one Ray actor of 1 CPU);
- `ray_w1`, `ray_w2`: generate_on_ray and score_on_ray with 1 or 2 actors of 1 CPU each on a local
  Ray cluster (2 CPUs, started once, before the clock), then the same in-process functions over
  the folders the actors wrote (they find the work done) and the same selection.

Rounds alternate the order (the machine is shared: the load average is printed per run). Every
variant must give the same completion ids, score rows and selections count; the script checks it.
The Ray cluster runs inside a network and PID namespace (`unshare -n -p -f --mount-proc`, the
script re-runs itself there) when it can, so nothing listens beyond loopback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assets.config import load_config  # noqa: E402
from factory.engines.ray_data import RayConfig, generate_on_ray, score_on_ray  # noqa: E402
from factory.generation.registry import EMBEDDED_PREFIX, DeferredBackend, make_backend, with_model_path  # noqa: E402
from factory.generation.runner import generate_completions  # noqa: E402
from factory.ids import prompt_id  # noqa: E402
from factory.routing import RoutingConfig, select  # noqa: E402
from factory.scoring.score import score_generations  # noqa: E402
from factory.scoring.sequence_classifier import SequenceClassifierScorer  # noqa: E402
from warehouse.store import Warehouse  # noqa: E402

VARIANTS = ("in_process", "in_process_t1", "ray_w1", "ray_w2")
STRATEGIES = ["reward_routing", "random_routing"]
IN_NAMESPACE = "BENCH_RAY_IN_NAMESPACE"


def base_home(args) -> Path:
    if args.home:
        return Path(args.home)
    home = Path(tempfile.mkdtemp(prefix="bench_ray_")) / "home"
    cmd = [str(Path(sys.executable).with_name("factory")), "run", "--config", "tiny", "--home", str(home),
           "--select", "+arbiter,prompts", "--workers", "1"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"base home (prompts, pool, Arbiter): {time.perf_counter() - t0:.0f}s", flush=True)
    return home


def workload(home: Path):
    cfg = load_config("tiny")
    wh = Warehouse(home)
    checkpoints = wh.read_table("checkpoints")
    teachers = []
    for t in cfg.resolved_teachers():
        row = checkpoints.filter(pl.col("name") == t.model.removeprefix(EMBEDDED_PREFIX)).row(-1, named=True)
        teachers.append(with_model_path(t, row["path"]))
    arbiter = checkpoints.filter(pl.col("name") == "arbiter").row(-1, named=True)["path"]
    prompts = wh.read_table("prompts").filter(pl.col("split") == "train")
    return cfg, teachers, arbiter, prompts


def repeated(prompts: pl.DataFrame, times: int) -> pl.DataFrame:
    """`prompts` `times` over, copy i's texts suffixed " (i)" (new prompt ids): a workload large enough
    for the per-row compute, not Ray's fixed costs, to decide."""
    copies = [prompts.with_columns(text=pl.col("text") + f" ({i})") for i in range(1, times)]
    out = pl.concat([prompts, *copies])
    ids = [prompt_id(lang, text) for lang, text in zip(out["language"], out["text"], strict=True)]
    return out.with_columns(prompt_id=pl.Series(ids, dtype=pl.String))


def run_variant(name: str, cfg, teachers, arbiter: str, prompts: pl.DataFrame, work: Path) -> dict:
    shards, cache, scratch = work / "shards", work / "cache", work / "scratch"
    k, run_id = cfg.generation.k, f"bench-{name}"
    scorer = SequenceClassifierScorer(arbiter, batch_size=cfg.arbiter.batch_size, max_length=cfg.arbiter.max_length, name="arbiter")
    times = {}
    import torch

    threads = torch.get_num_threads()
    if name == "in_process_t1":
        torch.set_num_threads(1)  # as one Ray actor of 1 CPU runs: tells Ray's own cost from the threads'
    t0 = time.perf_counter()
    if name.startswith("in_process"):
        gens, _ = generate_completions(prompts, [(t, make_backend(t)) for t in teachers], k, shards, run_id, progress=False)
    else:
        ray_cfg = RayConfig(workers=int(name.removeprefix("ray_w")))
        prompts.write_parquet(work / "prompts.parquet")
        generate_on_ray(work / "prompts.parquet", [(t, t) for t in teachers], k, shards, run_id, 2, ray_cfg, scratch)
        backends = [(t, DeferredBackend(t)) for t in teachers]
        gens, _ = generate_completions(prompts, backends, k, shards, run_id, progress=False)
        assert not any(b.built for _, b in backends), "the Ray job left generation work behind"
    times["generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not name.startswith("in_process"):
        gens.write_parquet(work / "generations.parquet")
        score_on_ray(work / "generations.parquet", work / "prompts.parquet", [scorer.config()], cache, ray_cfg, scratch)
    scores, _ = score_generations(gens, prompts, [scorer], cfg.scoring.fidelity, run_id, cache)
    assert name.startswith("in_process") or "model" not in scorer.__dict__, "the Ray job left scoring work behind"
    times["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored = scores.join(gens.select("completion_id", "sample_index", "text"), on="completion_id")
    selections, unselected = select(scored, STRATEGIES, RoutingConfig(), run_id)
    times["select"] = time.perf_counter() - t0
    times["total"] = sum(times.values())
    torch.set_num_threads(threads)
    # Texts differ with batch composition (sampling is seeded per batch), so which prompts have an
    # eligible completion may too: compare ids, score rows, and selected + unselected (prompts x strategies).
    ids = (tuple(sorted(gens["completion_id"])), scores.height, selections.height + unselected.height)
    return {"times": times, "ids": ids, "completions": gens.height}


def start_ray() -> None:
    import ray
    import ray.data

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False


def reexec_in_namespace() -> None:
    """Run this script again inside a fresh network + PID namespace with `lo` up, when possible."""
    if os.environ.get(IN_NAMESPACE) or not (shutil.which("unshare") and shutil.which("ip")):
        return
    ns = ["unshare", "-n", "-p", "-f", "--mount-proc", "--"]
    if subprocess.run([*ns, "true"], capture_output=True).returncode == 0:
        env = {**os.environ, IN_NAMESPACE: "1"}
        cmd = [*ns, "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, __file__, *sys.argv[1:]]
        sys.exit(subprocess.run(cmd, env=env).returncode)
    print("note: cannot create a network namespace here; Ray runs on 127.0.0.1 without one", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default="", help="a home holding the tiny pool, Arbiter and prompts (default: build one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=12, help="the training prompts this many times over (new ids)")
    args = ap.parse_args()
    reexec_in_namespace()
    from factory.quiet import quiet_libraries

    quiet_libraries()
    cfg, teachers, arbiter, prompts = workload(base_home(args))
    warm = Path(tempfile.mkdtemp(prefix="bench_ray_warm_"))
    run_variant("in_process", cfg, teachers, arbiter, prompts.head(8), warm)  # imports and first-call costs, once
    shutil.rmtree(warm)
    prompts = repeated(prompts, args.repeat)
    t0 = time.perf_counter()
    start_ray()
    print(f"ray start: {time.perf_counter() - t0:.1f}s (not counted below); {os.cpu_count()} cores; "
          f"{prompts.height} prompts x {len(teachers)} teachers x k={cfg.generation.k}", flush=True)  # fmt: skip
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for name in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            work = Path(tempfile.mkdtemp(prefix=f"bench_ray_{name}_"))
            load0 = os.getloadavg()[0]
            res = run_variant(name, cfg, teachers, arbiter, prompts, work)
            shutil.rmtree(work)
            results[name].append(res)
            t = res["times"]
            print(f"round {r + 1} {name:10s} generate {t['generate']:6.1f}s score {t['score']:5.1f}s "
                  f"select {t['select']:4.2f}s total {t['total']:6.1f}s  load {load0:.2f} -> {os.getloadavg()[0]:.2f}",
                  flush=True)  # fmt: skip
    med = {v: {p: statistics.median(r["times"][p] for r in results[v]) for p in ("generate", "score", "select", "total")}
           for v in VARIANTS}  # fmt: skip
    print(f"\n{results['in_process'][0]['completions']} completions per run; medians of {args.rounds} rounds (s)")
    print("| variant | generate | score | select | total | in_process / variant |\n|---|---|---|---|---|---|")
    for v in VARIANTS:
        m = med[v]
        print(f"| {v} | {m['generate']:.1f} | {m['score']:.1f} | {m['select']:.2f} | {m['total']:.1f} | "
              f"{med['in_process']['total'] / m['total']:.2f}x |")  # fmt: skip
    print(f"ray_w1 / ray_w2 (total) = {med['ray_w1']['total'] / med['ray_w2']['total']:.2f}x; "
          f"in_process_t1 / ray_w1 = {med['in_process_t1']['total'] / med['ray_w1']['total']:.2f}x")
    same = len({r["ids"] for v in VARIANTS for r in results[v]}) == 1
    print(f"same completion ids, score rows and selections in every run: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
