"""The Arbiter with and without prompt-reply PMI, side by side in one run, on a demo home's data.

Builds the Arbiter's pairs exactly as the `arbiter` asset does (the home's training prompts,
the config's seed and held-out fraction), trains the classifier-only Arbiter (`relevance: none`)
and the PMI one (`relevance: pmi`) from the home's embedded base, and prints held-out accuracy
per pair kind for: the classifier alone, PMI alone, and the combined reward the `scores` asset
uses. The same figures on pairs built from the home's dev prompts (which neither the base LM nor
the Arbiter ever trained on; measured, never fitted on) follow. Then both Arbiters score the
home's teacher generations (the `scores` asset's work) and the extra seconds PMI costs are printed.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_arbiter.py HOME [--out DIR] [--max-generations N]

HOME is a finished `factory demo` home (tables/prompts, tables/generations/language=*,
models/embedded/base). Nothing under HOME is written. Uses one torch thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl

from assets.config import load_config
from assets.models.assets import train_dialogs
from factory.scoring.sequence_classifier import SequenceClassifierScorer
from factory.sources.chatterbot import Dialog
from training.reward_model import PAIR_KINDS, heldout_accuracy, make_reward_pairs, train_reward_model


def read(home: Path, table: str, pattern: str = "**/*.parquet") -> pl.DataFrame:
    files = sorted((home / "tables" / table).glob(pattern))
    if not files:
        raise SystemExit(f"{home} has no {table} table ({pattern}): run `factory demo --home {home}` first")
    return pl.concat([pl.read_parquet(f, hive_partitioning=False) for f in files], how="diagonal_relaxed")


def row(name: str, metrics: dict) -> str:
    by_kind = metrics["accuracy_by_kind"]
    return f"| {name} | {metrics['accuracy']:.3f} | " + " | ".join(f"{by_kind[k]:.3f}" for k in PAIR_KINDS) + " |"


def table(title: str, n: dict, rows: list[tuple[str, dict]]) -> str:
    head = f"{title} (pairs per kind: {n})\n\n| reward | overall | " + " | ".join(PAIR_KINDS) + " |\n"
    return head + "|---" * (2 + len(PAIR_KINDS)) + "|\n" + "\n".join(row(name, m) for name, m in rows)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--config", default="default")
    parser.add_argument("--out", type=Path, default=None, help="where the two Arbiters go (default: a temp folder)")
    parser.add_argument("--max-generations", type=int, default=None)
    parser.add_argument("--draws", type=int, default=5, help="negative draws (pair seeds) measured beyond the asset's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    arb = cfg.arbiter
    prompts = read(args.home, "prompts")
    base = args.home / "models" / "embedded" / "base"
    pairs = make_reward_pairs(train_dialogs(prompts), seed=cfg.seed, heldout_fraction=arb.train.heldout_fraction)
    dev_dialogs = [
        Dialog(r["language"], r["text"], list(r["references"] or []), r["source"])
        for r in prompts.filter(pl.col("split") == "dev").iter_rows(named=True)
    ]
    # One draw of negatives per dialog gives ~117 pairs per kind, and which reply is drawn moves a
    # kind's accuracy by several points; more draws over the same held-out dialogs tighten it.
    seeds = [cfg.seed + i for i in range(args.draws)]
    heldout = pl.concat([
        make_reward_pairs(train_dialogs(prompts), seed=s, heldout_fraction=arb.train.heldout_fraction)
        .filter(pl.col("split") == "heldout") for s in seeds
    ])  # fmt: skip
    dev = pl.concat([make_reward_pairs(dev_dialogs, seed=s, heldout_fraction=0.0) for s in seeds])

    out = args.out or Path(tempfile.mkdtemp(prefix="bench_arbiter_"))
    trained = {}
    for relevance in ("none", "pmi"):
        start = time.perf_counter()
        trained[relevance] = train_reward_model(
            base, pairs, out / relevance, arb.train, relevance=relevance, relevance_max_length=arb.max_length
        )
        print(f"trained relevance={relevance} in {time.perf_counter() - start:.1f} s", flush=True)
    none, pmi = trained["none"], trained["pmi"]
    print(f"PMI weight fitted on {pmi['relevance']['fitted_on']['pairs']} train pairs: {pmi['relevance']['weights']}")

    def rows(plain: dict, combined: dict) -> list[tuple[str, dict]]:
        return [
            ("classifier alone (relevance: none)", plain),
            ("PMI alone", combined["components"]["pmi"]),
            ("classifier trained beside PMI, alone", combined["components"]["classifier"]),
            ("classifier + w * PMI (relevance: pmi)", combined),
        ]

    print()
    print(table("Held-out train-split pairs, the asset's draw", none["n_by_kind"], rows(none, pmi)))
    many_none = heldout_accuracy(out / "none", heldout, arb.train.max_length)
    many_pmi = heldout_accuracy(out / "pmi", heldout, arb.train.max_length)
    print()
    print(table(f"Held-out train-split pairs, {len(seeds)} draws", many_none["n_by_kind"], rows(many_none, many_pmi)))
    if dev.height:
        dev_none = heldout_accuracy(out / "none", dev, arb.train.max_length)
        dev_pmi = heldout_accuracy(out / "pmi", dev, arb.train.max_length)
        print()
        print(table(f"Dev-split pairs (prompts no model trained on), {len(seeds)} draws", dev_none["n_by_kind"], rows(dev_none, dev_pmi)))

    gens = read(args.home, "generations", "language=*/*.parquet")
    if args.max_generations:
        gens = gens.head(args.max_generations)
    text = dict(zip(prompts["prompt_id"], prompts["text"], strict=True))
    messages = [[{"role": "user", "content": text[p]}] for p in gens["prompt_id"]]
    completions = gens["text"].fill_null("").to_list()
    seconds = {}
    for relevance in ("none", "pmi"):
        scorer = SequenceClassifierScorer(
            out / relevance, batch_size=arb.batch_size, max_length=arb.max_length, device="cpu"
        )
        scorer.score(messages[:8], completions[:8])  # load the weights outside the timing
        start = time.perf_counter()
        scorer.score(messages, completions)
        seconds[relevance] = time.perf_counter() - start
    print()
    print(
        f"Scoring {len(completions)} generations (batch {arb.batch_size}, 1 thread): "
        f"classifier alone {seconds['none']:.1f} s, with PMI {seconds['pmi']:.1f} s "
        f"(+{seconds['pmi'] - seconds['none']:.1f} s, x{seconds['pmi'] / seconds['none']:.2f})"
    )
    print(json.dumps({"train_seconds": {"none": none["seconds"], "pmi": pmi["seconds"]},
                      "pmi_fit_seconds": pmi["relevance"]["pmi_seconds"]}))  # fmt: skip


if __name__ == "__main__":
    main()
