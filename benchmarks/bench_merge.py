"""Benchmark the streaming merge against a read-only pass and a naive whole-model merge.

Builds three ~134M-parameter Llama-style checkpoints (random weights, float32, safetensors)
in a temp folder, then measures each of these in its own subprocess (wall time and peak RSS):

  read          read every input tensor once (the I/O floor)
  linear        streaming linear merge of the 3 checkpoints
  ties          streaming TIES merge (base = checkpoint 0, density 0.5)
  naive_linear  load all 3 state dicts whole, average, save
  naive_ties    load all 3 state dicts whole, TIES per tensor, save

Targets: linear peak RSS <= 1.5x one model's size and time <= 2x read; ties time <= 5x read.
Usage: .venv/bin/python benchmarks/bench_merge.py [--repeats 2] [--workdir DIR] [--no-doc]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bench" / "merge.md"
MODES = ["read", "linear", "ties", "naive_linear", "naive_ties"]
LLAMA_130M = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def build_checkpoints(workdir: Path) -> tuple[list[Path], int, int]:
    """Three checkpoints: a random base and two perturbed copies (fine-tune stand-ins)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_130M))
    n_params = sum(p.numel() for p in model.parameters())
    paths = []
    for i in range(3):
        if i:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p), alpha=0.01)
        path = workdir / f"ckpt{i}"
        model.save_pretrained(path)
        paths.append(path)
    model_bytes = sum(f.stat().st_size for f in paths[0].glob("*.safetensors"))
    return paths, n_params, model_bytes


def build_in_subprocess(workdir: Path) -> tuple[list[Path], int, int]:
    """Build in a child so this parent process stays small while it spawns the measurements."""
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import bench_merge as b; "
        "p, n, size = b.build_checkpoints(Path(sys.argv[2])); print(json.dumps([[str(x) for x in p], n, size]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(workdir)], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(f"building checkpoints failed:\n{res.stderr[-3000:]}")
    paths, n_params, model_bytes = json.loads(res.stdout.strip().splitlines()[-1])
    return [Path(p) for p in paths], n_params, model_bytes


def child(mode: str, workdir: Path) -> dict:
    """Run one measurement in this process; report seconds and RSS figures."""
    import psutil
    import torch

    torch.set_num_threads(1)  # as the streaming merge does by default: same conditions for every mode

    from training.merge import merge_models
    from training.merge.streaming import CheckpointReader

    paths = sorted(p for p in workdir.glob("ckpt*") if p.is_dir())
    out = workdir / f"out_{mode}"
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if mode == "read":
        for path in paths:
            with CheckpointReader(path) as reader:
                for name in reader.names():
                    reader.get(name)
    elif mode == "linear":
        merge_models(paths, "linear", out)
    elif mode == "ties":
        merge_models(paths[1:], "ties", out, base=paths[0], densities=[0.5, 0.5])
    elif mode in ("naive_linear", "naive_ties"):
        naive_merge(paths, out, mode)
    else:
        raise ValueError(mode)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    shutil.rmtree(out, ignore_errors=True)
    return {"mode": mode, "seconds": seconds, "peak_rss": peak, "baseline_rss": baseline}


def peak_rss() -> int:
    """This process's resident-set high-water mark (VmHWM). Unlike getrusage's ru_maxrss it is not
    inherited from the parent across fork/exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def naive_merge(paths: list[Path], out: Path, mode: str) -> None:
    """What a quick script does: every model's whole state dict in memory at once."""
    from safetensors.torch import load_file, save_file

    from training.merge.ties import ties

    states = [{k: v.clone() for k, v in load_file(p / "model.safetensors").items()} for p in paths]
    if mode == "naive_linear":
        merged = {k: sum(s[k] for s in states) / len(states) for k in states[0]}
    else:
        merged = {k: ties([s[k] for s in states[1:]], states[0][k], densities=[0.5, 0.5]) for k in states[0]}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in merged.items()}, out / "model.safetensors", metadata={"format": "pt"})


def measure(mode: str, workdir: Path) -> dict:
    # Flush dirty pages first (the freshly built inputs, the previous output) so the kernel's
    # writeback throttling does not charge one mode for another's writes.
    os.sync()
    cmd = [sys.executable, __file__, "--child", mode, "--workdir", str(workdir)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument(
        "--repeats", type=int, default=2, help="runs per mode; the fastest time and the largest peak are kept"
    )
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/bench/merge.md")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workdir)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench_merge_", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        paths, n_params, model_bytes = build_in_subprocess(workdir)
        print(
            f"built 3 checkpoints of {n_params / 1e6:.1f}M params, {model_bytes / 1e6:.0f} MB each in {time.perf_counter() - t0:.0f}s"
        )
        results = {}
        for _ in range(args.repeats):
            for mode in MODES:
                r = measure(mode, workdir)
                best = results.setdefault(mode, r)
                best["seconds"] = min(best["seconds"], r["seconds"])
                best["peak_rss"] = max(best["peak_rss"], r["peak_rss"])
                print(f"  {mode:13s} {r['seconds']:6.2f}s  peak RSS {r['peak_rss'] / 1e6:6.0f} MB")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = summarise(results, n_params, model_bytes)
    print(report)
    if not args.no_doc:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(report)
        print(f"wrote {DOC.relative_to(ROOT)}")


def summarise(results: dict, n_params: int, model_bytes: int) -> str:
    read = results["read"]["seconds"]
    rows = []
    for mode in MODES:
        r = results[mode]
        extra = r["peak_rss"] - r["baseline_rss"]
        rows.append(
            f"| {mode} | {r['seconds']:.2f} | {r['seconds'] / read:.2f}x | {r['peak_rss'] / 1e6:.0f} | "
            f"{r['peak_rss'] / model_bytes:.2f}x | {extra / 1e6:.0f} | {extra / model_bytes:.2f}x |"
        )
    lin, ties = results["linear"], results["ties"]
    checks = [
        ("linear peak RSS <= 1.5x model size", lin["peak_rss"] / model_bytes, 1.5),
        ("linear time <= 2x read-only pass", lin["seconds"] / read, 2.0),
        ("ties time <= 5x read-only pass", ties["seconds"] / read, 5.0),
    ]
    verdicts = [f"- {name}: {value:.2f} -> {'PASS' if value <= limit else 'FAIL'}" for name, value, limit in checks]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join(
        [
            "# Merge benchmark",
            "",
            f"Date: {dt.date.today().isoformat()}. Machine: {platform.machine()}, {os.cpu_count()} CPU cores "
            f"(load average at the end {load}), Python {platform.python_version()}.",
            f"Inputs: 3 Llama-style checkpoints, {n_params / 1e6:.1f}M parameters, float32, "
            f"{model_bytes / 1e6:.0f} MB each (single safetensors file, untied lm_head). Page cache warm.",
            "Each mode ran in its own subprocess with one torch thread; time is the fastest of the repeats,",
            "peak RSS (VmHWM) the largest.",
            "`peak RSS` is the process's maximum resident set; `over baseline` subtracts the RSS after",
            "importing torch and the merge code (about the same for every mode).",
            "",
            "| mode | seconds | vs read | peak RSS MB | vs model | over baseline MB | vs model |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Targets (peak RSS ratio uses the full peak, baseline included):",
            *verdicts,
            "",
            "How the streaming merge gets there (training/merge/):",
            '- reads go through `safe_open(..., backend="pread")`: each tensor\'s bytes are copied into',
            "  memory the tensor owns and freed with it (with mmap, every touched page of every input stays",
            "  resident until the file is closed, so RSS grows to the sum of the inputs);",
            "- output shards are written as they are produced: names, shapes and dtypes are known up front,",
            "  so each shard's header is written first and tensor bytes are appended by a writer thread;",
            "- the methods reuse the tensors the runner read (`inplace`), and TIES/DARE work on 1 MiB chunks",
            "  with float-only ops (bool masks and `masked_fill_` are several times slower on CPU); TIES's",
            "  exact top-k threshold comes from a sampled bracket plus `kthvalue` on the bracketed band;",
            "- one torch thread: on cache-sized chunks thread synchronisation costs more than it gains, and",
            "  on a shared machine it can cost 5x.",
            "",
            "Reading the ratios: the read-only pass only copies input bytes; every merge must also write a",
            "model (a third of the bytes read here) into the page cache, which on this shared VM costs about",
            "as much as reading all three inputs, and both vary run to run with other tenants' load.",
            "",
            "Reproduce: `.venv/bin/python benchmarks/bench_merge.py` (needs ~3.5 GB of temp disk, removed at the end).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
