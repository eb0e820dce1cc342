"""Benchmark the streaming merge against a read-only pass and a naive whole-model merge.

Builds three ~134M-parameter Llama-style checkpoints (random weights, float32, safetensors)
in a temp folder, then measures each of these in its own subprocess (wall time and peak RSS):

  read          read every input tensor once with safetensors (`safe_open(..., backend="pread")`,
                each tensor copied into memory it owns): what "simply reading" a checkpoint costs
  read_reuse    read every input tensor once into one reused buffer (`CheckpointReader.read_into`):
                the floor for copying the input bytes, with no memory to fault in
  io_only       a merge with no arithmetic: read every input tensor into reused buffers and
                write the first input's tensors as the output (the I/O any merge must do)
  linear        streaming linear merge of the 3 checkpoints
  ties          streaming TIES merge (base = checkpoint 0, density 0.5)
  naive_linear  load all 3 state dicts whole, average, save
  naive_ties    load all 3 state dicts whole, TIES per tensor, save
  factory_merge the command a user runs, `factory merge ties.yaml OUT` (the same TIES merge), timed
                from outside: interpreter start, imports, torch, the merge, exit
  cli_start     `factory merge --help`: the command's fixed cost before any merge code runs

Targets: linear peak RSS <= 1.5x one model's size and time <= 2x read; ties time <= 3x read.

With --mergekit PATH (a folder where `pip install --target PATH mergekit` put mergekit and the
dependencies the venv lacks), mergekit's own TIES runs once on the same inputs, and every element
where its output differs from ours is checked against each model's top-k threshold.
Usage: .venv/bin/python benchmarks/bench_merge.py [--repeats 5] [--workdir DIR] [--no-doc] [--no-prime] [--mergekit PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bench" / "merge.md"
MODES = ["read", "read_reuse", "io_only", "linear", "ties", "naive_linear", "naive_ties", "factory_merge", "cli_start"]
CLI_MODES = ("factory_merge", "cli_start")  # timed from the parent around a `factory` subprocess
TIES_YAML = """merge_method: ties
base_model: {root}/ckpt0
models:
  - model: {root}/ckpt1
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {root}/ckpt2
    parameters: {{weight: 1.0, density: 0.5}}
{extra}"""
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


def child(mode: str, workdir: Path, prime: bool = True) -> dict:
    """Run one measurement in this process; report seconds and RSS figures."""
    import psutil
    import torch

    torch.set_num_threads(1)  # as the streaming merge does by default: same conditions for every mode

    from training.merge import merge_models
    from training.merge.streaming import CheckpointReader, byte_buffer

    paths = sorted(p for p in workdir.glob("ckpt*") if p.is_dir())
    out = workdir / f"out_{mode}"
    if prime:
        prime_page_cache(workdir, paths)
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if mode == "read":
        from safetensors import safe_open

        for path in paths:
            with safe_open(str(path / "model.safetensors"), framework="pt", backend="pread") as f:
                for name in f.keys():
                    f.get_tensor(name)
    elif mode == "read_reuse":
        buffer = None
        for path in paths:
            with CheckpointReader(path) as reader:
                if buffer is None:
                    buffer = byte_buffer(reader.largest_nbytes)
                for name in reader.names():
                    reader.read_into(name, buffer)
    elif mode == "io_only":
        io_only(paths, out)
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


def prime_page_cache(workdir: Path, paths: list[Path]) -> None:
    """Write and delete one model's worth of bytes, so every mode starts from the same memory state.

    On this project's VMs the first large write after a few idle seconds runs at ~0.6 GB/s,
    and at ~7 GB/s when page-cache memory was freed moments before (measured: the same
    536 MB writes took 0.8 s or 0.07 s depending only on what ran before them). Without
    priming, whichever mode follows a non-writing one pays that, whatever its own code.
    """
    size = sum(f.stat().st_size for f in paths[0].glob("*.safetensors"))
    scratch = workdir / "prime.bin"
    chunk = b"\x01" * (8 << 20)
    with open(scratch, "wb") as f:
        for _ in range(0, size, len(chunk)):
            f.write(chunk)
    scratch.unlink()


def io_only(paths: list[Path], out: Path) -> None:
    """The streaming merge's reads and writes with the arithmetic left out."""

    from training.merge.streaming import CheckpointReader, StreamingCheckpointWriter, byte_buffer

    readers = [CheckpointReader(p) for p in paths]
    names = readers[0].names()
    infos = [readers[0].infos[n] for n in names]
    buffers = [byte_buffer(readers[0].largest_nbytes) for _ in readers]
    writer = StreamingCheckpointWriter(out, infos, 5 * 10**9)
    for name in names:
        tensors = [r.read_into(name, b) for r, b in zip(readers, buffers, strict=True)]
        writer.write(name, tensors[0])
    writer.close()
    for r in readers:
        r.close()


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

    from training.merge import METHODS

    ties = METHODS["ties"]
    states = [{k: v.clone() for k, v in load_file(p / "model.safetensors").items()} for p in paths]
    if mode == "naive_linear":
        merged = {k: sum(s[k] for s in states) / len(states) for k in states[0]}
    else:
        merged = {k: ties([s[k] for s in states[1:]], states[0][k], densities=[0.5, 0.5]) for k in states[0]}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in merged.items()}, out / "model.safetensors", metadata={"format": "pt"})


def measure_cli(mode: str, workdir: Path, prime: bool = True) -> dict:
    """Wall time of a `factory` subprocess, as a user sees it (the page cache primed as for the others)."""
    paths = sorted(p for p in workdir.glob("ckpt*") if p.is_dir())
    if prime:
        prime_page_cache(workdir, paths)
    (workdir / "ties.yaml").write_text(TIES_YAML.format(root=workdir, extra=""))
    out = workdir / f"out_{mode}"
    exe = Path(sys.executable).with_name("factory")
    args = (
        [str(exe), "merge", "--help"]
        if mode == "cli_start"
        else [str(exe), "merge", str(workdir / "ties.yaml"), str(out)]
    )
    start = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{res.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return {"mode": mode, "seconds": seconds, "peak_rss": 0, "baseline_rss": 0}


def compare_with_mergekit(workdir: Path, mergekit_path: Path) -> str:
    """Run mergekit's TIES and ours on the same inputs; explain every element where they differ."""
    import torch
    from safetensors.torch import load_file

    from training.merge import merge_models

    (workdir / "ties_mk.yaml").write_text(TIES_YAML.format(root=workdir, extra="dtype: float32\n"))
    env = {**os.environ, "PYTHONPATH": f"{mergekit_path}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "mergekit.scripts.run_yaml", "ties_mk.yaml", "out_mk", "--no-copy-tokenizer"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
    )
    mk_seconds = time.perf_counter() - start
    if res.returncode != 0:
        return f"mergekit could not run: {res.stderr[-500:]}"
    paths = sorted(p for p in workdir.glob("ckpt*") if p.is_dir())
    ours_info = merge_models(paths[1:], "ties", workdir / "out_ours", base=paths[0], densities=[0.5, 0.5])
    ours, theirs = (
        load_file(workdir / "out_ours" / "model.safetensors"),
        load_file(workdir / "out_mk" / "model.safetensors"),
    )
    base = load_file(paths[0] / "model.safetensors")
    models = [load_file(p / "model.safetensors") for p in paths[1:]]
    n_diff = n_tied = n_elements = 0
    worst = 0.0
    for name, a in ours.items():
        b = theirs[name]
        n_elements += a.numel()
        diff = (a != b).reshape(-1)
        if not diff.any():
            continue
        n_diff += int(diff.sum())
        worst = max(worst, float(((a - b).abs() / b.abs().clamp_min(1e-12)).reshape(-1)[diff].max()))
        at_threshold = torch.zeros_like(diff)
        for m in models:
            mag = (m[name].float() - base[name].float()).abs().reshape(-1)
            k = int(0.5 * mag.numel())
            threshold = torch.topk(mag, k).values[-1]
            at_threshold |= (mag == threshold) & ((mag > threshold).sum() + (mag == threshold).sum() > k)
        n_tied += int((diff & at_threshold).sum())
    shutil.rmtree(workdir / "out_mk", ignore_errors=True)
    shutil.rmtree(workdir / "out_ours", ignore_errors=True)
    return (
        f"mergekit {res_version(mergekit_path)} TIES on the same inputs: {mk_seconds:.1f} s wall as a subprocess "
        f"(ours in-process {ours_info['seconds']:.1f} s). Elements that differ: {n_diff} of {n_elements}, "
        f"worst relative difference {worst:.2g}; of those, {n_tied} sit at a model's top-k threshold where more "
        f"entries tie than fit (mergekit's torch.argsort(descending=True) keeps an unspecified subset of the ties; "
        f"we keep the first by position)."
    )


def res_version(mergekit_path: Path) -> str:
    found = sorted(mergekit_path.glob("mergekit-*.dist-info"))
    return found[-1].name.removeprefix("mergekit-").removesuffix(".dist-info") if found else "?"


def measure(mode: str, workdir: Path, prime: bool = True) -> dict:
    # Flush dirty pages first (the freshly built inputs, the previous output) so the kernel's
    # writeback throttling does not charge one mode for another's writes.
    os.sync()
    if mode in CLI_MODES:
        return measure_cli(mode, workdir, prime)
    cmd = [sys.executable, __file__, "--child", mode, "--workdir", str(workdir)]
    if not prime:
        cmd.append("--no-prime")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=[m for m in MODES if m not in CLI_MODES])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--repeats", type=int, default=5, help="runs per mode; times are reported as medians")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/bench/merge.md")
    ap.add_argument(
        "--no-prime", action="store_true", help="skip writing and deleting a scratch model before each mode"
    )
    ap.add_argument("--mergekit", type=Path, help="a `pip install --target` folder holding mergekit: compare TIES")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workdir, not args.no_prime)))
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
                r = measure(mode, workdir, not args.no_prime)
                best = results.setdefault(mode, {**r, "all": []})
                best["all"].append(r["seconds"])
                best["seconds"] = min(best["seconds"], r["seconds"])
                best["peak_rss"] = max(best["peak_rss"], r["peak_rss"])
                print(f"  {mode:13s} {r['seconds']:6.2f}s  peak RSS {r['peak_rss'] / 1e6:6.0f} MB")
        mergekit_note = compare_with_mergekit(workdir, args.mergekit.resolve()) if args.mergekit else None
        if mergekit_note:
            print(mergekit_note)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = summarise(results, n_params, model_bytes, not args.no_prime, mergekit_note)
    print(report)
    if not args.no_doc:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(report)
        print(f"wrote {DOC.relative_to(ROOT)}")


def summarise(
    results: dict, n_params: int, model_bytes: int, prime: bool = True, mergekit_note: str | None = None
) -> str:
    med = {mode: statistics.median(r["all"]) for mode, r in results.items()}
    read, floor, io = med["read"], med["read_reuse"], med["io_only"]
    rows = []
    for mode in MODES:
        r, t = results[mode], med[mode]
        rss = "- | -" if mode in CLI_MODES else f"{r['peak_rss'] / 1e6:.0f} | {r['peak_rss'] / model_bytes:.2f}x"
        rows.append(
            f"| {mode} | {t:.2f} | {r['seconds']:.2f} | {max(r['all']):.2f} | {t / read:.2f}x | {t / floor:.2f}x | "
            f"{t / io:.2f}x | {rss} |"
        )
    lin = results["linear"]
    checks = [
        ("linear peak RSS <= 1.5x model size", lin["peak_rss"] / model_bytes, 1.5),
        ("linear time <= 2x read-only pass (`read`)", med["linear"] / read, 2.0),
        ("ties time <= 3x read-only pass (`read`)", med["ties"] / read, 3.0),
        ("stricter: linear time <= 2x `read_reuse`", med["linear"] / floor, 2.0),
        ("stricter: ties time <= 5x `read_reuse`", med["ties"] / floor, 5.0),
    ]
    verdicts = [f"- {name}: {value:.2f} -> {'PASS' if value <= limit else 'FAIL'}" for name, value, limit in checks]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    repeats = len(results["read"]["all"])
    return "\n".join(
        [
            "# Merge benchmark",
            "",
            f"Date: {dt.date.today().isoformat()}. Machine: {platform.machine()}, {os.cpu_count()} CPU cores "
            f"(load average at the end {load}), Python {platform.python_version()}.",
            f"Inputs: 3 Llama-style checkpoints, {n_params / 1e6:.1f}M parameters, float32, "
            f"{model_bytes / 1e6:.0f} MB each (single safetensors file, untied lm_head). Page cache warm.",
            f"Each mode ran {repeats} times, each in its own subprocess with one torch thread, the modes",
            "interleaved. Times and ratios are medians (fastest and slowest runs shown too); peak RSS",
            "(VmHWM) is the largest of the runs. "
            + (
                "Before each timed run the child wrote and deleted one model's worth of scratch bytes "
                "(`prime_page_cache`), so every mode starts from the same page-cache state."
                if prime
                else "Run with `--no-prime`: each mode found the page cache as the previous one left it."
            ),
            "",
            "| mode | median s | fastest | slowest | vs read | vs read_reuse | vs io_only | peak RSS MB | vs model |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Modes: `read` reads every input tensor once with safetensors (pread backend, each tensor",
            "into memory it owns); `read_reuse` reads them into one reused buffer (the copy floor);",
            "`io_only` is a merge without arithmetic (all reads, plus writing one model); `naive_*`",
            "load every model whole first. `factory_merge` is the same TIES merge as the command a user",
            "runs (`factory merge ties.yaml OUT`, wall time of the subprocess: interpreter, imports, torch,",
            "merge, exit); `cli_start` is `factory merge --help` (the command's cost before any merge code).",
            f"End to end: `factory merge` {med['factory_merge']:.2f} s against {med['ties']:.2f} s for the merge in "
            f"process; {med['cli_start']:.2f} s of it is starting the command.",
            "",
            *([f"Against mergekit: {mergekit_note}", ""] if mergekit_note else []),
            "Targets (the issue measures against the read-only pass, `read`; the stricter lines use the floor):",
            *verdicts,
            "",
            "Reproduce: `.venv/bin/python benchmarks/bench_merge.py` (needs ~3.5 GB of temp disk, removed at the end).",
            "What the streaming merge does to get here, and why writes vary so much on this VM: docs/BENCHMARKS.md.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
