"""Selection benchmark: factory's polars routing + best_worst pair ids vs a straightforward pandas version.

    .venv/bin/python benchmarks/bench_selection.py                 # 2M prompts x 5 teachers = 10M completions
    .venv/bin/python benchmarks/bench_selection.py --scale 0.01    # quick run (100k completions)

A generator subprocess writes a synthetic scored table to Parquet; then each implementation runs in its
own subprocess (fresh interpreter, so `ru_maxrss` is that implementation's peak alone) and does the same
work: reward_routing, fixed_routing, random_routing and single_teacher selections, plus best_worst pair
ids. Time covers reading the Parquet file through the last id. The parent checks that both produced the
same selections and pairs (digests) and prints wall time, peak RSS and the ratios; --out appends a
dated section to a Markdown file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
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
STRATEGIES = ["reward_routing", "fixed_routing", "random_routing", "single_teacher"]
TEACHERS = ["west_european", "east_european", "middle_eastern", "east_asian", "generalist"]


def generate(path: str, n_prompts: int, seed: int = 0) -> None:
    import numpy as np
    import polars as pl

    from factory.languages import LANGUAGE_CODES

    rng = np.random.default_rng(seed)
    n_t = len(TEACHERS)
    n = n_prompts * n_t
    prompt_no = np.repeat(np.arange(n_prompts, dtype=np.uint64), n_t)
    pid_hash = rng.integers(0, 2**63, n_prompts, dtype=np.int64)
    langs = rng.integers(0, len(LANGUAGE_CODES), n_prompts)
    df = pl.DataFrame(
        {
            "prompt_id": pl.Series(pid_hash).cast(pl.String).gather(prompt_no.astype(np.int64)),
            "language": pl.Series(list(LANGUAGE_CODES)).gather(np.repeat(langs, n_t)),
            "completion_id": pl.Series(rng.integers(0, 2**63, n, dtype=np.int64)).cast(pl.String),
            "teacher": pl.Series(TEACHERS).gather(np.tile(np.arange(n_t), n_prompts)),
            "sample_index": pl.Series(np.zeros(n, dtype=np.int32)),
            "text": pl.Series(rng.integers(0, 40, n)).cast(pl.String),  # short: some identical best/worst texts
            "reward": rng.normal(0, 1, n),
            "language_match": rng.random(n) < 0.95,
        }
    ).with_columns(
        ("p_" + pl.col("prompt_id")).alias("prompt_id"),
        ("c_" + pl.col("completion_id")).alias("completion_id"),
        pl.col("reward").alias("reward_z"),
    )
    df.write_parquet(path, row_group_size=1_000_000)


def _digest(values) -> str:
    return hashlib.blake2b("\n".join(sorted(values)).encode(), digest_size=8).hexdigest()


def _peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_polars(path: str, partitioned: bool = False) -> dict:
    """Whole table in one `select` call, or (partitioned) one call per language partition, as the
    language-partitioned assets run it: each partition's output is written to Parquet and dropped."""
    import polars as pl

    from factory.pairs import best_worst_candidates, pair_ids
    from factory.routing import RoutingConfig, best_mean_teacher, select

    t0 = time.perf_counter()
    lf = pl.scan_parquet(path)
    cfg = RoutingConfig()
    parts = [None]
    if partitioned:  # the baseline teacher is global: rank teachers once over all languages
        cfg = RoutingConfig(single_teacher=best_mean_teacher(lf))
        parts = sorted(lf.select(pl.col("language").unique()).collect()["language"].to_list())
    out_dir = Path(path).parent / ("out_partitioned" if partitioned else "out_whole")
    out_dir.mkdir(exist_ok=True)
    t_select = t_pairs = 0.0
    for lang in parts:
        part = lf if lang is None else lf.filter(pl.col("language") == lang)
        t = time.perf_counter()
        sel, _ = select(part, STRATEGIES, cfg, run_id="bench")
        sel.write_parquet(out_dir / f"selections_{lang}.parquet")
        del sel
        t_select += time.perf_counter() - t
        t = time.perf_counter()
        kept = (
            best_worst_candidates(part)
            .filter(pl.col("status") == "kept")
            .select("prompt_id", "chosen_completion_id", "rejected_completion_id")
            .collect(engine="streaming")
        )
        ids = pair_ids(kept["prompt_id"], "best_worst", 0, kept["chosen_completion_id"], kept["rejected_completion_id"])
        ids.to_frame().write_parquet(out_dir / f"pairs_{lang}.parquet")
        del kept, ids
        t_pairs += time.perf_counter() - t
    seconds, peak = time.perf_counter() - t0, _peak_mib()
    sel = pl.read_parquet(out_dir / "selections_*.parquet")
    out = {s: sel.filter(pl.col("strategy") == s)["completion_id"].to_list() for s in STRATEGIES}
    ids = pl.read_parquet(out_dir / "pairs_*.parquet")["pair_id"].to_list()
    return {"seconds": seconds, "peak_rss_mib": peak, "stages": {"select": t_select, "best_worst": t_pairs}, "selections": out, "pair_ids": ids}


def run_pandas(path: str) -> dict:
    import pandas as pd

    from factory.ids import pair_id
    from factory.languages import LANGUAGES, cluster_of

    t0 = time.perf_counter()
    df = pd.read_parquet(path)
    ok = df[df["reward"].notna() & df["language_match"]]
    out = {}
    # reward_routing: sort, first per prompt (runner-up for the margin)
    ranked = ok.sort_values(["prompt_id", "reward", "completion_id"], ascending=[True, False, True])
    best = ranked.groupby("prompt_id", sort=False).head(1)
    runner = ranked.groupby("prompt_id", sort=False).nth(1)[["prompt_id", "reward"]].rename(columns={"reward": "runner_up"})
    best = best.merge(runner, on="prompt_id", how="left")
    best["margin"] = (best["reward"] - best["runner_up"]).fillna(0.0)
    out["reward_routing"] = best["completion_id"].tolist()
    sample0 = ok[ok["sample_index"] == 0]
    # fixed_routing: the language's cluster teacher
    fixed = {code: cluster_of(code) for code in LANGUAGES}
    pick = sample0[sample0["teacher"] == sample0["language"].map(fixed)]
    out["fixed_routing"] = pick.sort_values("completion_id").drop_duplicates("prompt_id")["completion_id"].tolist()
    # random_routing: a seeded teacher of the pool per prompt
    pool = sorted(df["teacher"].unique())
    ids = df["prompt_id"].unique()
    h = [int.from_bytes(hashlib.blake2b(b"0:" + p.encode(), digest_size=8).digest(), "big") for p in ids]
    chosen = pd.DataFrame({"prompt_id": ids, "chosen": [pool[x % len(pool)] for x in h]})
    rnd = sample0.merge(chosen, on="prompt_id")
    out["random_routing"] = rnd[rnd["teacher"] == rnd["chosen"]].sort_values("completion_id").drop_duplicates("prompt_id")["completion_id"].tolist()
    # single_teacher: best macro-mean reward
    scored = df[df["reward"].notna()]
    macro = scored.groupby(["language", "teacher"])["reward"].mean().groupby("teacher").mean()
    single = sorted(macro.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    out["single_teacher"] = sample0[sample0["teacher"] == single].sort_values("completion_id").drop_duplicates("prompt_id")["completion_id"].tolist()
    t1 = time.perf_counter()
    # best_worst: first and last of the reward ranking; drop ties, identical texts
    worst = ok.sort_values(["prompt_id", "reward", "completion_id"], ascending=[True, True, False]).groupby("prompt_id", sort=False).head(1)
    pairs = ranked.groupby("prompt_id", sort=False).head(1).merge(worst, on="prompt_id", suffixes=("_c", "_r"))
    n_ok = ok.groupby("prompt_id").size().rename("n").reset_index()
    pairs = pairs.merge(n_ok, on="prompt_id")
    keep = (pairs["n"] >= 2) & (pairs["reward_c"] > pairs["reward_r"]) & (pairs["text_c"].str.strip() != pairs["text_r"].str.strip())
    pairs = pairs[keep]
    ids = [pair_id(p, "best_worst", 0, c, r) for p, c, r in zip(pairs["prompt_id"], pairs["completion_id_c"], pairs["completion_id_r"], strict=True)]
    t2, peak = time.perf_counter(), _peak_mib()
    return {"seconds": t2 - t0, "peak_rss_mib": peak, "stages": {"select": t1 - t0, "best_worst": t2 - t1}, "selections": out, "pair_ids": ids}


def worker(impl: str, path: str) -> None:
    run = {"polars": run_polars, "polars_partitioned": lambda p: run_polars(p, partitioned=True), "pandas": run_pandas}[impl]
    result = run(path)
    summary = {
        "impl": impl,
        "seconds": round(result["seconds"], 2),
        "stages": {k: round(v, 2) for k, v in result["stages"].items()},
        "peak_rss_mib": result["peak_rss_mib"],  # measured when the work ended, before the digests
        "counts": {s: len(v) for s, v in result["selections"].items()} | {"pairs": len(result["pair_ids"])},
        "digests": {s: _digest(v) for s, v in result["selections"].items()} | {"pairs": _digest(result["pair_ids"])},
    }
    print("RESULT " + json.dumps(summary))


def _spawn(args: list[str], timeout: float) -> dict | None:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:]) | {"process_seconds": round(time.perf_counter() - start, 2)}
    return {"error": f"exit {proc.returncode}: {proc.stderr[-600:]}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of 2M prompts (x 5 teachers)")
    ap.add_argument("--impl", choices=["all", "polars", "polars_partitioned", "pandas"], default="all")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per implementation, seconds")
    ap.add_argument("--out", type=Path, help="append the figures to this Markdown file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate:
        return generate(a.data, a.generate)
    if a.worker:
        return worker(a.worker, a.data)

    n_prompts = int(2_000_000 * a.scale)
    with tempfile.TemporaryDirectory(prefix="bench_selection_") as tmp:
        data = str(Path(tmp) / "scored.parquet")
        t = time.perf_counter()
        gen = subprocess.run([sys.executable, __file__, "--generate", str(n_prompts), "--data", data], env=os.environ | {"PYTHONPATH": str(ROOT)})
        if gen.returncode:
            sys.exit("data generation failed")
        print(f"generated {n_prompts * len(TEACHERS):,} scored completions ({n_prompts:,} prompts) in {time.perf_counter() - t:.1f}s, "
              f"{Path(data).stat().st_size / 2**20:.0f} MiB Parquet")
        impls = ["polars", "polars_partitioned", "pandas"] if a.impl == "all" else [a.impl]
        results = {i: _spawn(["--worker", i, "--data", data], a.timeout) for i in impls}
    for impl, r in results.items():
        print(impl, json.dumps(r))
    report = _report(n_prompts, results)
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as f:
            f.write(report + "\n")


def _report(n_prompts: int, results: dict) -> str:
    lines = [
        f"## {dt.date.today().isoformat()}: {n_prompts * len(TEACHERS):,} completions ({n_prompts:,} prompts x {len(TEACHERS)} teachers)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}.",
        "",
        "| implementation | wall s (in worker) | select s | best_worst s | peak RSS MiB | status |",
        "|---|---|---|---|---|---|",
    ]
    for impl, r in results.items():
        if "error" in r:
            lines.append(f"| {impl} | - | - | - | - | {r['error'][:120]} |")
        else:
            lines.append(f"| {impl} | {r['seconds']} | {r['stages']['select']} | {r['stages']['best_worst']} | {r['peak_rss_mib']} | ok |")
    pan = results.get("pandas", {})
    for name in ("polars", "polars_partitioned"):
        pol = results.get(name, {})
        if "seconds" in pol and "seconds" in pan:
            same = pol["digests"] == pan["digests"]
            lines += [
                "",
                f"pandas / {name}: time x{pan['seconds'] / pol['seconds']:.2f}, peak memory x{pan['peak_rss_mib'] / pol['peak_rss_mib']:.2f}; "
                f"outputs identical (selection and pair-id digests): {'yes' if same else 'NO: ' + json.dumps([pol['counts'], pan['counts']])}.",
            ]
    if any("counts" in r for r in results.values()):
        lines += ["", f"Counts: {json.dumps(next(r['counts'] for r in results.values() if 'counts' in r))}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
