"""Merge ablation, decided on the dev split: which merge of the cluster models keeps each specialist's quality?

From a finished demo home (`factory demo`), take the cluster models (`checkpoints`, stage "cluster"),
the cluster models' common start (the base of the task-vector methods: the embedded base model, or
sft_model with `training.clusters.start: sft_model`) and the dev prompts. Every candidate merge goes
through `training.merge_choice.choose_merge`, the code the merged_model asset runs with
`merge.candidates`: merge, answer the dev prompts of each cluster's own languages (greedy, the
evaluation's sampling), judge head to head against that cluster's model on them with the configured
evaluation judge, pooled dev win rate, keep the best. The models go to --workdir, never into the home.

`--eval` is a REPORT, never a choice: after the pick it judges the picked merge on the eval split
against each cluster model on its own languages (as `win_rates` does for merged_model), pooled and
per cluster, printed in its own labelled table.

Usage (2 shared cores: run it niced):
  nice -n 10 .venv/bin/python benchmarks/ablate_merge.py --home /tmp/dA_for_merge [--candidates JSON] \
      [--workdir /tmp/ablate_merge] [--json out.json] [--eval]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from assets.common import model_folder
from assets.config import FactoryConfig, load_config
from assets.evaluation.assets import configured_judge
from assets.resources import FactoryResource
from assets.training.assets import merge_base
from factory.evaluation import answer_eval, cluster_opponent, judge_against_baseline
from factory.languages import own_languages
from training.merge import MergeSettings
from training.merge_choice import candidates_table, choose_merge, pooled_figures
from training.online import dev_figures
from warehouse.store import Warehouse

RUN_ID = "ablate_merge"
GRID = [
    {"method": "linear"},  # the demo's merge: equal-weight average
    {"method": "ties", "density": 0.5},
    {"method": "ties", "density": 0.2},
    {"method": "dare_ties", "density": 0.5},
    {"method": "dare_linear", "density": 1.0},  # task arithmetic: the sum of the task vectors (no drops)
    {"method": "dare_linear", "density": 0.5},
]


@dataclass
class Home:
    """What the ablations read from a finished demo home (read only: they write into a workdir)."""

    cfg: FactoryConfig
    wh: Warehouse
    judge: object
    checkpoints: pl.DataFrame
    prompts: pl.DataFrame


def open_home(home: str, config: str | None) -> Home:
    """The home, checked against the config that built it, with the configured evaluation judge."""
    FactoryResource(home=home, config_path=config).check_home()  # the config must be the home's
    cfg = load_config(config)
    wh = Warehouse(home)
    return Home(cfg, wh, configured_judge(cfg, wh.home, None), wh.read_table("checkpoints"), wh.read_table("prompts"))


def choose_among(h: Home, settings: MergeSettings, clusters: list[dict], base: str | None, work: Path, run_id: str):
    """`choose_merge` over the cluster models `clusters` (rows: name, checkpoint_id, path), as merged_model
    runs it: the merges go to work/candidates, the kept one to work/merged, dev answers to work/dev."""
    names = [c["name"] for c in clusters]
    return choose_merge(
        settings,
        {c["name"]: c["path"] for c in clusters},
        {n: own_languages(n) for n in names},
        work / "merged",
        work / "candidates",
        work / "dev",
        h.prompts,
        h.judge,
        h.cfg.evaluation.sampling,
        run_id,
        base=base,
        batch_size=h.cfg.evaluation.batch_size,
        winrates=h.cfg.evaluation.winrates,
        model_ids={c["name"]: c["checkpoint_id"] for c in clusters},
    )


def print_frame(frame: pl.DataFrame) -> None:
    with pl.Config(tbl_rows=50, tbl_cols=30, tbl_width_chars=250, float_precision=3):
        print(frame, flush=True)


def figures_line(f: dict) -> str:
    """W/T/L, pooled win rate and macro win rate with its CI, on one line."""
    return (
        f"W/T/L {f['wins']}/{f['ties']}/{f['losses']}  pooled {f['win_rate']:.3f}  "
        f"macro {f.get('macro_win_rate', float('nan')):.3f} [{f.get('macro_ci_low', float('nan')):.3f}, "
        f"{f.get('macro_ci_high', float('nan')):.3f}]"
    )


def eval_report(h: Home, merged: dict, clusters: list[dict], work: Path, run_id: str) -> dict:
    """REPORT ONLY (after a dev pick, never fed back): the merged model (`merged`: checkpoint_id, path)
    on the eval split against each cluster model on its own languages, as `win_rates` judges
    merged_model; per cluster and pooled."""
    ev = h.cfg.evaluation
    merged_answers, _ = answer_eval(merged, h.prompts, ev.sampling, work / "eval", run_id, ev.batch_size)
    frames, report = [], {}
    for row in clusters:
        own = h.prompts.filter(pl.col("language").is_in(list(own_languages(row["name"]))))
        theirs, _ = answer_eval(row, own, ev.sampling, work / "eval", run_id, ev.batch_size)
        j, _ = judge_against_baseline(
            h.judge,
            own,
            merged_answers,
            theirs,
            merged["checkpoint_id"],
            row["checkpoint_id"],
            "merged",
            run_id,
            opponent=cluster_opponent(row["name"]),
        )
        frames.append(j)
        report[row["name"]] = dev_figures(j, ev.winrates)
    report["pooled"] = pooled_figures(frames, ev.winrates)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, help="a finished demo home (FACTORY_HOME)")
    ap.add_argument("--config", default=None, help="the run config that built the home (default: the default profile)")
    ap.add_argument(
        "--workdir", default="/tmp/ablate_merge", help="merges and answer shards go here, never into the home"
    )
    ap.add_argument("--candidates", default=json.dumps(GRID), help="JSON list of merge.candidates entries")
    ap.add_argument("--json", default=None, help="also write the dev record (and the eval report) here")
    ap.add_argument("--eval", action="store_true", help="REPORT ONLY, after the pick: the picked merge on eval")
    args = ap.parse_args()

    h = open_home(args.home, args.config)
    work = Path(args.workdir)
    settings = MergeSettings.model_validate(h.cfg.merge.model_dump() | {"candidates": json.loads(args.candidates)})
    clusters = h.checkpoints.filter(pl.col("stage") == "cluster").unique("name", keep="last").sort("name")
    if not clusters.height:
        sys.exit(f"no cluster models in {h.wh.home}: run `factory demo` there first")
    # the task vectors' base: the cluster models' common start, as merged_model finds it
    base = merge_base(clusters, h.wh) or model_folder(h.cfg.training.base_model, h.wh.home, h.checkpoints)[0]
    names = clusters["name"].to_list()
    print(
        f"home {args.home}: clusters {names}; judge {h.judge.name}; {len(settings.candidates)} candidates", flush=True
    )

    started = time.perf_counter()
    choice = choose_among(h, settings, clusters.to_dicts(), base, work, RUN_ID)
    seconds = time.perf_counter() - started
    print_frame(candidates_table(choice.record))
    print(f"dev choice: {choice.record['kept_label']} ({seconds:.1f} s for all candidates)", flush=True)
    out = {"dev": choice.record, "seconds": seconds}

    if args.eval:  # a report on the pick, after it was made; nothing below feeds back into it
        merged = {"checkpoint_id": f"ablate_merge:{choice.record['kept_label']}", "path": str(work / "merged")}
        report = eval_report(h, merged, clusters.to_dicts(), work, RUN_ID)
        print(
            "REPORT eval (after the dev pick; not used to choose): picked merge vs each cluster model on its own languages"
        )
        for name, f in report.items():
            print(f"  {name:16s} {figures_line(f)}")
        out["eval_report"] = report
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
