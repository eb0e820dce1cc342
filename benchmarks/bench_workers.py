"""`factory run --workers N`: wall time of a selection with 1 and 2 worker processes, side by side.

    .venv/bin/python benchmarks/bench_workers.py                                   # tiny, +scores, 3 rounds
    .venv/bin/python benchmarks/bench_workers.py --config default --rounds 2
    .venv/bin/python benchmarks/bench_workers.py --base +arbiter --select prompts,generations,scores

Each round runs every variant once, in alternating order (round 1: w1, w1_t1, w2; round 2: reversed;
...), each as a fresh `factory run` process into a fresh home: copied from a base home built once when
--base is given (the pool and the Arbiter trained once), else empty. Variants: `w1` (--workers 1, torch's
default threads), `w1_t1` (--workers 1 with OMP_NUM_THREADS=1, to tell the threads' share of the gain
from the processes'), `w2` (--workers 2; each worker gets cores/2 threads). The load average is read
before and after every run. The tables prompts, generations and scores must hold the same ids in every
home; the script checks it and prints medians and the w1/w2 ratio.
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

ROOT = Path(__file__).resolve().parents[1]
FACTORY = Path(sys.executable).with_name("factory")
VARIANTS = {"w1": (1, {}), "w1_t1": (1, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}), "w2": (2, {})}
TABLES = {"prompts": "prompt_id", "generations": "completion_id", "scores": "completion_id"}


def factory_run(home: Path, config: str, select: str, workers: int, extra_env: dict) -> float:
    env = {**os.environ, **extra_env}
    env.pop("DAGSTER_HOME", None)
    cmd = [str(FACTORY), "run", "--select", select, "--config", config, "--home", str(home), "--workers", str(workers)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return seconds


def digest(home: Path) -> dict:
    from warehouse.store import Warehouse

    wh = Warehouse(home)
    out = {}
    for table, key in TABLES.items():
        ids = wh.read_table(table)[key]
        out[table] = (ids.len(), hash(tuple(sorted(ids))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--select", default="+scores")
    ap.add_argument("--base", default="", help="a selection built once into a base home that every run copies")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="w1,w1_t1,w2")
    args = ap.parse_args()
    names = args.variants.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench_workers_"))
    base = work / "base"
    if args.base:
        t = factory_run(base, args.config, args.base, 1, {})
        print(f"base ({args.base}): {t:.0f}s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    digests = {}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            home = work / f"{name}_{r}"
            if args.base:
                shutil.copytree(base, home)
            workers, env = VARIANTS[name]
            load0 = os.getloadavg()[0]
            t = factory_run(home, args.config, args.select, workers, env)
            load1 = os.getloadavg()[0]
            times[name].append(t)
            digests[name] = digest(home)
            print(f"round {r + 1} {name:6s} {t:7.1f}s  load {load0:.2f} -> {load1:.2f}", flush=True)
            shutil.rmtree(home)
    same = len({tuple(sorted(d.items())) for d in digests.values()}) == 1
    print(f"\nconfig {args.config}, select {args.select!r}, base {args.base or '-'}, {os.cpu_count()} cores")
    print("| variant | runs (s) | median (s) |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {', '.join(f'{t:.0f}' for t in times[name])} | {statistics.median(times[name]):.0f} |")
    if "w1" in times and "w2" in times:
        print(f"w1 / w2 = {statistics.median(times['w1']) / statistics.median(times['w2']):.2f}x")
    if "w1_t1" in times and "w2" in times:
        print(f"w1_t1 / w2 = {statistics.median(times['w1_t1']) / statistics.median(times['w2']):.2f}x")
    print(f"same ids and row counts in prompts, generations, scores: {same}  {digests[names[0]]}")
    shutil.rmtree(work)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
