"""Merge ablation, decided on the dev split: which merge of the cluster models keeps each specialist's quality?

From a finished demo home (`factory demo`), take the cluster models (`checkpoints`, stage "cluster"),
the embedded base model (for the task-vector methods) and the dev prompts. Every candidate merge goes
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
from pathlib import Path

import polars as pl

from assets.common import model_folder
from assets.config import load_config
from assets.evaluation.assets import configured_judge
from assets.resources import FactoryResource
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

    FactoryResource(home=args.home, config_path=args.config).check_home()  # the config must be the home's
    cfg = load_config(args.config)
    wh = Warehouse(args.home)
    work = Path(args.workdir)
    settings = MergeSettings.model_validate(cfg.merge.model_dump() | {"candidates": json.loads(args.candidates)})
    judge = configured_judge(cfg, wh.home, None)
    ck = wh.read_table("checkpoints")
    clusters = ck.filter(pl.col("stage") == "cluster").unique("name", keep="last").sort("name")
    if not clusters.height:
        sys.exit(f"no cluster models in {wh.home}: run `factory demo` there first")
    names = clusters["name"].to_list()
    models = dict(zip(names, clusters["path"].to_list(), strict=True))
    base = model_folder(cfg.training.base_model, wh.home, ck)[0]
    prompts = wh.read_table("prompts")
    print(f"home {args.home}: clusters {names}; judge {judge.name}; {len(settings.candidates)} candidates", flush=True)

    started = time.perf_counter()
    choice = choose_merge(
        settings,
        models,
        {n: own_languages(n) for n in names},
        work / "merged",
        work / "candidates",
        work / "dev",
        prompts,
        judge,
        cfg.evaluation.sampling,
        RUN_ID,
        base=base,
        batch_size=cfg.evaluation.batch_size,
        winrates=cfg.evaluation.winrates,
        model_ids=dict(zip(names, clusters["checkpoint_id"].to_list(), strict=True)),
    )
    seconds = time.perf_counter() - started
    with pl.Config(tbl_rows=50, tbl_cols=30, tbl_width_chars=250, float_precision=3):
        print(candidates_table(choice.record))
    print(f"dev choice: {choice.record['kept_label']} ({seconds:.1f} s for all candidates)", flush=True)
    out = {"dev": choice.record, "seconds": seconds}

    if args.eval:  # a report on the pick, after it was made; nothing below feeds back into it
        merged_ck = {"checkpoint_id": f"ablate_merge:{choice.record['kept_label']}", "path": str(work / "merged")}
        eval_answers, _ = answer_eval(
            merged_ck, prompts, cfg.evaluation.sampling, work / "eval", RUN_ID, cfg.evaluation.batch_size
        )
        frames, report = [], {}
        for row in clusters.iter_rows(named=True):
            own = prompts.filter(pl.col("language").is_in(list(own_languages(row["name"]))))
            theirs, _ = answer_eval(row, own, cfg.evaluation.sampling, work / "eval", RUN_ID, cfg.evaluation.batch_size)
            j, _ = judge_against_baseline(
                judge,
                own,
                eval_answers,
                theirs,
                merged_ck["checkpoint_id"],
                row["checkpoint_id"],
                "merged",
                RUN_ID,
                opponent=cluster_opponent(row["name"]),
            )
            frames.append(j)
            report[row["name"]] = dev_figures(j, cfg.evaluation.winrates)
        report["pooled"] = pooled_figures(frames, cfg.evaluation.winrates)
        print(
            "REPORT eval (after the dev pick; not used to choose): picked merge vs each cluster model on its own languages"
        )
        for name, f in report.items():
            print(
                f"  {name:16s} W/T/L {f['wins']}/{f['ties']}/{f['losses']}  pooled {f['win_rate']:.3f}  "
                f"macro {f.get('macro_win_rate', float('nan')):.3f} [{f.get('macro_ci_low', float('nan')):.3f}, "
                f"{f.get('macro_ci_high', float('nan')):.3f}]"
            )
        out["eval_report"] = report
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
