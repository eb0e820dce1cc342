"""Cluster-model ablation, decided on the dev split: which cluster models merge well?

From a finished demo home (`factory demo`; use a copy, nothing is written into it), for each variant of
`training.clusters` train the cluster models into --workdir (`training.clusters.train_cluster_models`,
what the cluster_models asset runs, with the home's sft_data and offline pairs), then:
  1. choose among the profile's merge candidates on dev exactly as merged_model does
     (`training.merge_choice.choose_merge` through `ablate_merge.choose_among`): each candidate against
     THIS variant's own cluster models, each on its cluster's own languages; the task-vector merges'
     base is the variant's start (the common ancestor);
  2. an absolute guard: the picked merge against the arbitrage SFT model (`sft_model`) on every dev
     prompt (`training.online.dev_answers` / `judge_on_dev` / `dev_figures`), so a variant cannot win
     "vs specialists" merely because its specialists got worse;
  3. for the record: each cluster model against sft_model on its own languages' dev prompts, pooled
     (does the cluster training add anything over the model it could have started from?).

Variants (start, cluster SFT):
  base_sft_dpo        the pretrained base, SFT on the cluster's rows, DPO on its pairs (the old recipe)
  sft_model_dpo       the arbitrage SFT model, DPO on the cluster's pairs
  sft_model_sft_dpo   the arbitrage SFT model, SFT on the cluster's rows, then DPO

The dev choice: the best pooled dev merged-vs-specialists win rate among the variants whose dev
merged-vs-SFT win rate is not below base_sft_dpo's (the current recipe; when it is not run, no guard).

`--eval` is a REPORT, never a choice: after the dev choice it judges the chosen variant's merge on the
eval split against its cluster models, each on its own languages (as `win_rates` does for
merged_model), pooled and per cluster, in its own labelled table.

Usage (2 shared cores: run it niced; about 1-2 minutes of training per variant):
  cp -r /tmp/R1 /tmp/clu_home
  nice -n 10 .venv/bin/python benchmarks/ablate_clusters.py --home /tmp/clu_home \
      [--variants base_sft_dpo,sft_model_dpo] [--workdir /tmp/ablate_clusters] [--json out.json] [--eval]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl
from ablate_merge import Home, choose_among, eval_report, figures_line, open_home, print_frame

from assets.io_manager import partition_for
from assets.training.assets import cluster_start_model
from factory.languages import own_languages
from training.clusters import train_cluster_models
from training.config import ClusterTrainingConfig
from training.merge_choice import candidates_table, pooled_figures
from training.online import dev_answers, dev_figures, judge_on_dev

RUN_ID = "ablate_clusters"
PARTITIONED = {"preference_pairs"}  # of cluster_models' inputs (sft_data is one table)
CURRENT = "base_sft_dpo"
VARIANTS = {
    CURRENT: ClusterTrainingConfig(start="base", sft=True),
    "sft_model_dpo": ClusterTrainingConfig(start="sft_model", sft=False),
    "sft_model_sft_dpo": ClusterTrainingConfig(start="sft_model", sft=True),
}


def asset_input(h: Home, asset: str) -> pl.DataFrame:
    """An upstream asset as the IO manager hands it to cluster_models: a language-partitioned one as its
    partitions in the config's language order. The order matters: the trainers shuffle with a fixed seed, so the same rows
    in another order make other batches and other models (enough to move dev win rates by 0.03)."""
    keys = h.cfg.languages if asset in PARTITIONED else [None]
    parts = [partition_for(asset, asset, key) for key in keys]
    return pl.concat([h.wh.read_table(asset, p) for p in parts if h.wh.has(asset, p)], how="diagonal_relaxed")


def run_variant(h: Home, name: str, clusters_cfg: ClusterTrainingConfig, work: Path, sft: dict) -> dict:
    """Train the variant's cluster models, choose its merge on dev, judge that merge against SFT on dev."""
    cfg = h.cfg.model_copy(update={"training": h.cfg.training.model_copy(update={"clusters": clusters_cfg})})
    ck = h.checkpoints
    start, _ = cluster_start_model(cfg, h.wh.home, ck, ck.filter(pl.col("name") == "sft_model"))
    started = time.perf_counter()
    records, summary = train_cluster_models(
        start,
        asset_input(h, "sft_data"),
        asset_input(h, "preference_pairs"),
        cfg.languages,
        work / name / "models",
        cfg.training,
        cfg.arbitrage.sft_strategy,
    )
    train_seconds = time.perf_counter() - started
    clusters = [{"name": r["name"], "checkpoint_id": f"{name}:{r['name']}", "path": str(r["path"])} for r in records]
    print(f"[{name}] trained {len(clusters)} cluster models from {start} in {train_seconds:.1f} s", flush=True)

    choice = choose_among(h, cfg.merge, clusters, start, work / name, RUN_ID)
    print_frame(pl.DataFrame(summary))
    print_frame(candidates_table(choice.record))

    ev, dev_dir = h.cfg.evaluation, work / "dev"
    dev = h.prompts.filter(pl.col("split") == "dev")
    merged, _ = dev_answers(work / name / "merged", dev, ev.sampling, dev_dir, RUN_ID, ev.batch_size)
    theirs, _ = dev_answers(sft["path"], dev, ev.sampling, dev_dir, RUN_ID, ev.batch_size)
    judged, _ = judge_on_dev(
        h.judge, dev, merged, theirs, f"{name}:merged", sft["checkpoint_id"], "dev_merged_vs_sft", RUN_ID
    )
    # the specialists themselves against sft_model on their own languages: does cluster training add anything?
    own = []
    for c in clusters:
        mine = dev.filter(pl.col("language").is_in(list(own_languages(c["name"]))))
        answers, _ = dev_answers(c["path"], mine, ev.sampling, dev_dir, RUN_ID, ev.batch_size)
        own.append(
            judge_on_dev(
                h.judge, mine, answers, theirs, c["checkpoint_id"], sft["checkpoint_id"], "dev_cluster_vs_sft", RUN_ID
            )[0]
        )
    kept = choice.record["candidates"][choice.record["kept"]]
    return {
        "variant": name,
        "clusters": clusters_cfg.model_dump(),
        "start": str(start),
        "train_seconds": train_seconds,
        "training": summary,
        "merge_choice": choice.record,
        "vs_specialists": kept["dev"],
        "vs_specialists_by_cluster": kept["dev_by_cluster"],
        "vs_sft": dev_figures(judged, ev.winrates),
        "specialists_vs_sft": pooled_figures(own, ev.winrates),
    }


def dev_table(results: list[dict]) -> pl.DataFrame:
    rows = []
    for r in results:
        s, t = r["vs_specialists"], r["vs_sft"]
        row = {
            "variant": r["variant"],
            "merge": r["merge_choice"]["kept_label"],
            "vs_specialists W/T/L": f"{s['wins']}/{s['ties']}/{s['losses']}",
            "vs_specialists": s["win_rate"],
        }
        row |= {f"vs_{c}": f.get("win_rate") for c, f in r["vs_specialists_by_cluster"].items()}
        row |= {"vs_sft W/T/L": f"{t['wins']}/{t['ties']}/{t['losses']}", "vs_sft": t["win_rate"]}
        row |= {"specialists_vs_sft": r["specialists_vs_sft"]["win_rate"]}
        row |= {"train_s": r["train_seconds"]}
        rows.append(row)
    return pl.DataFrame(rows)


def dev_choice(results: list[dict]) -> dict:
    """The best dev merged-vs-specialists among the variants whose dev merged-vs-SFT is not below the
    current recipe's; ties go to the first listed."""
    current = next((r for r in results if r["variant"] == CURRENT), None)
    floor = current["vs_sft"]["win_rate"] if current else None
    eligible = [r for r in results if floor is None or r["vs_sft"]["win_rate"] >= floor]
    return max(eligible, key=lambda r: (r["vs_specialists"]["win_rate"], -results.index(r)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, help="a finished demo home (FACTORY_HOME); read only")
    ap.add_argument("--config", default=None, help="the run config that built the home (default: the default profile)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--workdir", default="/tmp/ablate_clusters", help="models, merges and answers go here")
    ap.add_argument("--json", default=None, help="also write every variant's record (and the eval report) here")
    ap.add_argument("--eval", action="store_true", help="REPORT ONLY, after the dev choice: its merge on eval")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")

    h = open_home(args.home, args.config)
    sft = h.checkpoints.filter(pl.col("name") == "sft_model")
    if not sft.height:
        sys.exit(f"no sft_model in {h.wh.home}: run `factory demo` there first")
    sft = sft.row(-1, named=True)
    work = Path(args.workdir)
    print(
        f"home {args.home}: variants {names}; judge {h.judge.name}; merge candidates "
        f"{[c.model_dump(exclude_none=True) for c in h.cfg.merge.candidates]}",
        flush=True,
    )
    results = [run_variant(h, name, VARIANTS[name], work, sft) for name in names]

    print("dev: each variant's picked merge vs its own cluster models (each on its own languages), and vs sft_model")
    print_frame(dev_table(results))
    chosen = dev_choice(results)
    print(f"dev choice: {chosen['variant']} (merge {chosen['merge_choice']['kept_label']})", flush=True)
    out = {"dev": results, "dev_choice": chosen["variant"]}

    if args.eval:  # a report on the dev choice, after it was made; nothing below feeds back into it
        name = chosen["variant"]
        merged = {"checkpoint_id": f"{RUN_ID}:{name}:merged", "path": str(work / name / "merged")}
        clusters = [
            {
                "name": r["cluster"],
                "checkpoint_id": f"{name}:{r['cluster']}",
                "path": str(work / name / "models" / r["cluster"]),
            }
            for r in chosen["training"]
        ]
        report = eval_report(h, merged, clusters, work / name, RUN_ID)
        print(f"REPORT eval (after the dev choice; not used to choose): {name}'s merge vs its cluster models")
        for cluster, f in report.items():
            print(f"  {cluster:16s} {figures_line(f)}")
        out["eval_report"] = {"variant": name, **report}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
