"""Selection and pairs with the warehouse on S3 (a local SeaweedFS) vs on local disk, side by side.

    .venv/bin/python benchmarks/bench_s3.py --scale 0.1     # 200k prompts x 5 teachers = 1M completions
    .venv/bin/python benchmarks/bench_s3.py                 # 2M prompts x 5 teachers = 10M completions

The synthetic scored table and its prompts of bench_selection.py are written once into each home
through `Warehouse.write_table` (a local folder; `s3://factory/bench` on a SeaweedFS that this script
starts on 127.0.0.1 and stops), as the IO manager writes them. Then each stage runs as its asset
does, in its own process (fresh interpreter, so the peak RSS is its own), backends alternating:

- select: `read_table` of the scored table (the IO manager's load_input), then `select` with the
  four routing strategies;
- best_worst: `read_table` of the scored table and the prompts, then `best_worst`.

Each process first reads and processes a 5,000-row table from the same home (imports, thread pools,
the S3 connection): every figure is of a warm process. Reported per backend: the write of the
scored table, each stage's read and compute seconds, and the peak RSS; then the S3/local ratios,
and whether both backends produced identical selections and pairs. --out appends the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import bench_selection  # noqa: E402  (the synthetic table and its digests)

STRATEGIES = bench_selection.STRATEGIES
SCORED, PROMPTS = "bench_scored", "bench_prompts"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage(stage_name: str, home: str, table: str, prompts_table: str) -> dict:
    import polars as pl

    from factory.pairs import best_worst
    from factory.routing import RoutingConfig, select
    from warehouse.store import Warehouse

    wh = Warehouse(home)
    t0 = time.perf_counter()
    scored = wh.read_table(table)
    prompts = wh.read_table(prompts_table) if stage_name == "best_worst" else None
    read = time.perf_counter() - t0
    t1 = time.perf_counter()
    if stage_name == "select":
        sel, _ = select(scored, STRATEGIES, RoutingConfig(), run_id="bench")
        digest = bench_selection._digest(sel.sort("prompt_id", "strategy")["completion_id"].to_list())
        rows = sel.height
    else:
        pairs, _ = best_worst(scored, prompts, run_id="bench")
        digest = bench_selection._digest(pairs.sort("pair_id")["pair_id"].to_list())
        rows = pairs.height
    compute = time.perf_counter() - t1
    del pl
    return {"read": read, "compute": compute, "rows": rows, "digest": digest, "peak_rss_mib": _peak_mib()}


def worker(stage_name: str, home: str) -> None:
    stage(stage_name, home, f"{SCORED}_warm", f"{PROMPTS}_warm")  # a warm process: imports, pools, connection
    result = stage(stage_name, home, SCORED, PROMPTS)
    print("RESULT " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))


def _spawn(stage_name: str, home: str, timeout: float) -> dict:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--worker", stage_name, home], capture_output=True, text=True,
                          env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"exit {proc.returncode}: {proc.stderr[-800:]}"}


def _fill(home: str, folder: Path) -> float:
    """Write the scored table and the prompts (and small warm-up copies) into `home`; seconds of the scored write."""
    import polars as pl

    from warehouse.store import Warehouse

    wh = Warehouse(home)
    scored = pl.read_parquet(folder / "scored.parquet")
    prompts = pl.read_parquet(folder / "prompts.parquet")
    wh.write_table(f"{SCORED}_warm", scored.head(5_000))
    wh.write_table(f"{PROMPTS}_warm", prompts.head(1_000))
    wh.write_table(PROMPTS, prompts)
    t0 = time.perf_counter()
    wh.write_table(SCORED, scored)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 2M prompts x 5 teachers = 10M completions")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each stage per backend, alternating")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, help="append the report to this markdown file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    from tests.s3server import seaweedfs

    n_prompts = int(2_000_000 * args.scale)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, seaweedfs(Path(tmp) / "seaweedfs") as server:
        folder = Path(tmp) / "data"
        folder.mkdir()
        bench_selection.generate(str(folder), n_prompts)
        size = (folder / "scored.parquet").stat().st_size / 2**20
        os.environ.update(server.env() | {"FACTORY_LOCAL_HOME": str(Path(tmp) / "s3-local")})
        homes = {"local": str(Path(tmp) / "home"), "s3": f"s3://{server.bucket}/bench"}
        writes = {name: _fill(home, folder) for name, home in homes.items()}
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.repeats):
            for stage_name in ("select", "best_worst"):
                for name, home in homes.items():
                    result = _spawn(stage_name, home, args.timeout)
                    print(stage_name, name, result, flush=True)
                    runs.setdefault((stage_name, name), []).append(result)
    report = _report(n_prompts, size, writes, runs, load_before, os.getloadavg())
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")


def _best(results: list[dict]) -> dict:
    ok = [r for r in results if "error" not in r]
    return min(ok, key=lambda r: r["read"] + r["compute"]) if ok else results[0]


def _report(n_prompts: int, size: float, writes: dict, runs: dict, load_before, load_after) -> str:
    n = n_prompts * len(bench_selection.TEACHERS)
    lines = [
        f"### {n / 1e6:g}M completions ({n_prompts:,} prompts x {len(bench_selection.TEACHERS)} teachers), "
        f"scored table {size:.0f} MiB",
        "",
        f"{dt.date.today()}, {platform.machine()}, nproc {os.cpu_count()}, load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; best of the repeats per (stage, backend)",
        "",
        "| backend | write scored (s) | select: read + compute (s) | best_worst: read + compute (s) | total (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    totals, digests = {}, {}
    for name in ("local", "s3"):
        sel, bw = _best(runs[("select", name)]), _best(runs[("best_worst", name)])
        if "error" in sel or "error" in bw:
            lines.append(f"| {name} | {writes[name]:.2f} | {sel.get('error', '')} | {bw.get('error', '')} | | |")
            continue
        totals[name] = sel["read"] + sel["compute"] + bw["read"] + bw["compute"]
        digests[name] = (sel["digest"], bw["digest"])
        lines.append(
            f"| {name} | {writes[name]:.2f} | {sel['read']:.2f} + {sel['compute']:.2f} | {bw['read']:.2f} + {bw['compute']:.2f} "
            f"| {totals[name]:.2f} | {max(sel['peak_rss_mib'], bw['peak_rss_mib']):.0f} |"
        )
    if len(totals) == 2:
        read = {k: _best(runs[("select", k)])["read"] + _best(runs[("best_worst", k)])["read"] for k in totals}
        lines += ["", f"S3 / local: write {writes['s3'] / writes['local']:.2f}x, reads {read['s3'] / read['local']:.2f}x, "
                  f"stages end to end {totals['s3'] / totals['local']:.2f}x; "
                  f"identical selections and pairs: {'yes' if digests['s3'] == digests['local'] else 'NO'}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
