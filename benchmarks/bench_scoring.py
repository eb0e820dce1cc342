"""Reward scoring throughput: length-sorted batches vs unsorted, same completions, one run.

Builds a tiny Llama reward model locally (no downloads), scores a few hundred
completions of mixed lengths both ways, checks the rewards agree, and writes
completions/s and the speed-up to docs/bench/scoring.md.

    .venv/bin/python benchmarks/bench_scoring.py [--n 300] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(out: Path, texts: list[str], hidden: int) -> Path:
    import torch
    from transformers import LlamaForSequenceClassification

    from training.tiny import save_model, tiny_llama_config, train_tokenizer

    tok = train_tokenizer(texts, vocab_size=2048)
    config = tiny_llama_config(tok, hidden_size=hidden, layers=2, heads=4, max_positions=512)
    config.num_labels = 1
    torch.manual_seed(0)
    return save_model(LlamaForSequenceClassification(config), tok, out)


def workload(n: int, seed: int) -> tuple[list[list[dict]], list[str], list[str]]:
    """n (prompt, completion) pairs from the corpus, completions of very mixed lengths (1..~300 tokens)."""
    from factory.sources.chatterbot import load_dialogs

    rng = random.Random(seed)
    dialogs = [d for d in load_dialogs(max_per_language=60) if d.references]
    pool = [r for d in dialogs for r in d.references]
    prompts, completions = [], []
    for _ in range(n):
        d = rng.choice(dialogs)
        k = rng.choice([1, 1, 1, 2, 4, 8, 16])  # mostly short, a long tail, as generations are
        prompts.append([{"role": "user", "content": d.prompt}])
        completions.append(" ".join(rng.choice(pool) for _ in range(k)))
    return prompts, completions, [d.prompt for d in dialogs] + pool


def timed(scorer, prompts, completions, repeats: int) -> tuple[float, list[float]]:
    best, rewards = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        rewards = scorer.score(prompts, completions)
        best = min(best, time.perf_counter() - start)
    return best, rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "scoring.md")
    args = parser.parse_args()

    import torch

    from factory.scoring.sequence_classifier import SequenceClassifierScorer

    prompts, completions, texts = workload(args.n, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp) / "rm", texts, args.hidden)
        kw = {"batch_size": args.batch_size, "max_length": args.max_length}
        sorted_scorer = SequenceClassifierScorer(path, sort_by_length=True, **kw)
        unsorted_scorer = SequenceClassifierScorer(path, sort_by_length=False, **kw)
        lengths = sorted(len(x) for x in sorted_scorer.encode(prompts, completions))
        timed(sorted_scorer, prompts[:8], completions[:8], 1)  # warm-up
        t_unsorted, r_unsorted = timed(unsorted_scorer, prompts, completions, args.repeats)
        t_sorted, r_sorted = timed(sorted_scorer, prompts, completions, args.repeats)
    max_diff = max(abs(a - b) for a, b in zip(r_sorted, r_unsorted, strict=True))
    rate_sorted, rate_unsorted = args.n / t_sorted, args.n / t_unsorted
    device = sorted_scorer.device.type
    report = f"""# Reward scoring benchmark: length-sorted vs unsorted batches

Date: {dt.date.today().isoformat()}. Command: `.venv/bin/python benchmarks/bench_scoring.py --n {args.n} --batch-size {args.batch_size} --repeats {args.repeats}`.

Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device `{device}` (fp32 on CPU);
the CPU was shared with other jobs, so absolute figures are noisy; the ratio is the point.
Model: random-weight Llama sequence classifier (hidden {args.hidden}, 2 layers, vocab 2048), max_length {args.max_length}.
Workload: {args.n} corpus prompts with completions of mixed lengths (tokens p10/p50/p90/max:
{lengths[len(lengths) // 10]}/{lengths[len(lengths) // 2]}/{lengths[9 * len(lengths) // 10]}/{lengths[-1]}). Best of {args.repeats} runs each.

| batching | seconds | completions/s |
|---|---|---|
| unsorted (caller order) | {t_unsorted:.2f} | {rate_unsorted:.1f} |
| sorted by length | {t_sorted:.2f} | {rate_sorted:.1f} |

Speed-up of sorting: **{rate_sorted / rate_unsorted:.2f}x**. Largest reward difference between the two
orders: {max_diff:.2e} (padding does not change a reward; order is restored).
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
