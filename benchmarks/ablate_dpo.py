"""Offline DPO ablation, decided on the dev split: which offline DPO keeps the arbitrage SFT gain?

From a finished demo home (`factory demo`), take the arbitrage SFT model (`sft_model`), the offline
training pairs (`preference_pairs`, round 0, train prompts only) and the dev prompts (split "dev"; the
eval prompts are never read unless `--eval` asks for a labelled report). Each variant trains offline
DPO from the SFT model (the SFT model is also the frozen reference, as in `dpo_offline_model`), answers
the dev prompts greedily (`training.online.dev_sampling`, as the online rounds' dev decisions do) and is
judged head to head against the SFT model's dev answers by the configured evaluation judge
(`assets.evaluation.assets.configured_judge`; the reference judge by default), through
`training.online.dev_answers` / `judge_on_dev` / `dev_figures`.

Pair sources:
  arbiter      the demo's pairs: best_worst (the Arbiter's best vs worst right-language teacher
               completion) and/or native_vs_translated
  oracle       best_worst on the same prompts and the same eligible (right-language) teacher
               completions, ranked by an ORACLE instead of the Arbiter: chrF of the completion
               against the prompt's reference replies (the quantity the reference judge measures,
               here on train prompts, never dev or eval). Says whether offline DPO fails because of
               the Arbiter's pairs or because of DPO at this size.

One row per variant: dev W/T/L vs SFT, pooled win rate (ties half; what the online rounds decide
on), macro win rate over languages with its bootstrap 95% CI and mdd, the dev answers' language-match
rate, how many dev answers are identical to SFT's, and training seconds.

Usage (2 shared cores: run it niced):
  nice -n 10 .venv/bin/python benchmarks/ablate_dpo.py --home /tmp/d1_for_dpo [--variants a,b] \
      [--workdir /tmp/ablate_dpo] [--json out.json] [--eval beta1.0,oracle_bw]

`--eval` is a REPORT, never a choice: after the default was chosen on dev, it judges the named
variants on the eval split against the SFT model (stage "REPORT eval"), printed in its own table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

from assets.config import load_config
from assets.evaluation.assets import configured_judge
from assets.resources import FactoryResource
from factory.evaluation import answer_eval, judge_against_baseline
from factory.judges.reference import chrf_max
from factory.langid import detect_many, same_language
from factory.pairs import best_worst
from factory.routing import scored_frame
from training.dpo import DPOStageConfig, train_dpo
from training.online import dev_answers, dev_figures, judge_on_dev
from warehouse.store import Warehouse

RUN_ID = "ablate_dpo"
BOTH = ("best_worst", "native_vs_translated")
# The fields the variants vary start from the recipe of the demo that showed the problem (beta 0.1,
# lr 5e-5, sigmoid, no RPO), whatever the config now says; the rest comes from its training.dpo.
BASE = {"beta": 0.1, "lr": 5e-5, "loss_type": "sigmoid", "rpo_alpha": None}
# name -> (overrides of BASE, pair source, pair methods)
VARIANTS: dict[str, tuple[dict, str, tuple[str, ...]]] = {
    "beta0.1": ({}, "arbiter", BOTH),
    "beta0.5": ({"beta": 0.5}, "arbiter", BOTH),
    "beta1.0": ({"beta": 1.0}, "arbiter", BOTH),
    "lr1e-5": ({"lr": 1e-5}, "arbiter", BOTH),
    "rpo1.0": ({"rpo_alpha": 1.0}, "arbiter", BOTH),
    "bw_only": ({}, "arbiter", ("best_worst",)),
    "ipo": ({"loss_type": "ipo"}, "arbiter", BOTH),
    "oracle_bw": ({}, "oracle", ("best_worst",)),
    "oracle_bw+nvt": ({}, "oracle", BOTH),
    # combinations, run after the single-factor rows
    "beta0.5+rpo1.0": ({"beta": 0.5, "rpo_alpha": 1.0}, "arbiter", BOTH),
    "beta1.0+rpo1.0": ({"beta": 1.0, "rpo_alpha": 1.0}, "arbiter", BOTH),
    "lr1e-5+rpo1.0": ({"lr": 1e-5, "rpo_alpha": 1.0}, "arbiter", BOTH),
    "bw_only+beta0.5": ({"beta": 0.5}, "arbiter", ("best_worst",)),
    "oracle_bw+rpo1.0": ({"rpo_alpha": 1.0}, "oracle", ("best_worst",)),
    # beyond the grid: is beta 1.0 (the grid's edge) a peak or just "move less"?
    "beta2.0": ({"beta": 2.0}, "arbiter", BOTH),
    "bw_only+beta1.0": ({"beta": 1.0}, "arbiter", ("best_worst",)),
    "oracle_bw+beta1.0": ({"beta": 1.0}, "oracle", ("best_worst",)),
    # the spread of one recipe: the same variant with other training seeds (data order, init of nothing else)
    "beta0.1+seed1": ({"seed": 1}, "arbiter", BOTH),
    "beta0.1+seed2": ({"seed": 2}, "arbiter", BOTH),
    "beta1.0+seed1": ({"beta": 1.0, "seed": 1}, "arbiter", BOTH),
    "beta1.0+seed2": ({"beta": 1.0, "seed": 2}, "arbiter", BOTH),
}


def checkpoint(wh: Warehouse, name: str) -> dict:
    ck = wh.read_table("checkpoints").filter(pl.col("name") == name)
    if not ck.height:
        sys.exit(f"no checkpoint named {name!r} in {wh.home}: run `factory demo` there first")
    return ck.row(-1, named=True)


def oracle_best_worst(wh: Warehouse, prompts: pl.DataFrame, arbiter_pairs: pl.DataFrame, scorer: str) -> tuple[pl.DataFrame, dict]:
    """best_worst pairs ranked by chrF against the references instead of the Arbiter, on the prompts the
    Arbiter's best_worst pairs cover (so both saw the decontamination gate) and the same eligible
    (language-matched) teacher completions. Also: how often the Arbiter's own pairs agree with the oracle."""
    scores = wh.read_table("scores")
    scores = scores.filter(pl.col("producer").is_null()) if "producer" in scores.columns else scores
    gens = wh.read_table("generations", columns=["completion_id", "sample_index", "text"])
    scored = scored_frame(scores, gens, scorer).filter(pl.col("prompt_id").is_in(arbiter_pairs["prompt_id"].implode()))
    refs = dict(zip(prompts["prompt_id"], prompts["references"].to_list(), strict=True))
    oracle = [chrf_max(t, list(refs[p] or [])) for p, t in zip(scored["prompt_id"], scored["text"], strict=True)]
    # A prompt without reference replies has no oracle reward: it gets no oracle pair.
    scored = scored.with_columns(pl.Series("reward", oracle, dtype=pl.Float64)).filter(pl.col("reward").is_not_null())
    pairs, stats = best_worst(scored, prompts, require_language_match=True, run_id=RUN_ID)
    by_id = dict(zip(scored["completion_id"], scored["reward"], strict=True))
    judged = [(by_id[c], by_id[r]) for c, r in zip(arbiter_pairs["chosen_completion_id"], arbiter_pairs["rejected_completion_id"],
                                                   strict=True) if c in by_id and r in by_id]
    same = pairs.join(arbiter_pairs.select("prompt_id", "chosen_completion_id", "rejected_completion_id"),
                      on=["prompt_id", "chosen_completion_id", "rejected_completion_id"]).height
    stats |= {"arbiter_pairs": arbiter_pairs.height, "arbiter_pairs_with_oracle": len(judged),
              "oracle_agrees": sum(c > r for c, r in judged), "oracle_ties": sum(c == r for c, r in judged),
              "identical_to_arbiter_pair": same}
    return pairs, stats


def language_match_rate(answers: pl.DataFrame, prompts: pl.DataFrame) -> float:
    rows = answers.join(prompts.select("prompt_id", pl.col("language").alias("lang")), on="prompt_id")
    detected = detect_many(rows["text"].to_list())
    return sum(same_language(lang, d) for lang, d in zip(rows["lang"], detected, strict=True)) / max(rows.height, 1)


def identical(a: pl.DataFrame, b: pl.DataFrame) -> int:
    j = a.select("prompt_id", "text").join(b.select("prompt_id", pl.col("text").alias("b")), on="prompt_id")
    return int((j["text"].str.strip_chars() == j["b"].str.strip_chars()).sum())


def row_text(name: str, f: dict, extra: dict) -> str:
    if not f.get("n"):
        return f"{name:18} no verdicts"
    return (f"{name:18} {f['wins']:>3}/{f['ties']:>3}/{f['losses']:<3} {f['win_rate']:.3f}   "
            f"{f['macro_win_rate']:.3f} [{f['macro_ci_low']:.3f}, {f['macro_ci_high']:.3f}] {f['macro_mdd']:.3f}  "
            f"{extra['language_match']:.3f}  {extra['identical']:>4}  {extra['pairs']:>5}  {extra['seconds']:>6.1f}")


HEADER = (f"{'variant':18} {'W/T/L':>11} pooled  macro [95% CI]         mdd    lang   same  pairs  train_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, help="a finished demo home (FACTORY_HOME)")
    ap.add_argument("--config", default=None, help="the run config that built the home (default: the default profile)")
    ap.add_argument("--workdir", default="/tmp/ablate_dpo", help="models and answer shards go here, never into the home")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of: {', '.join(VARIANTS)}")
    ap.add_argument("--json", default=None, help="also write every row (figures, configs, pair stats) here")
    ap.add_argument("--eval", default="", help="REPORT ONLY, after choosing on dev: variants to judge on eval vs SFT")
    args = ap.parse_args()

    unknown = [v for v in (args.variants + "," + args.eval).split(",") if v and v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    FactoryResource(home=args.home, config_path=args.config).check_home()  # the config must be the home's
    cfg = load_config(args.config)
    wh = Warehouse(args.home)
    work = Path(args.workdir)
    judge = configured_judge(cfg, wh.home, None)
    sampling, batch = cfg.training.online.dev_sampling, cfg.training.online.batch_size
    wr_cfg = cfg.evaluation.winrates

    prompts = wh.read_table("prompts")
    train_ids = prompts.filter(pl.col("split") == "train")["prompt_id"].implode()
    pairs = wh.read_table("preference_pairs").filter((pl.col("round") == 0) & pl.col("prompt_id").is_in(train_ids))
    sft = checkpoint(wh, "sft_model")
    sft_dev, _ = dev_answers(sft["path"], prompts, sampling, work / "dev", RUN_ID, batch)
    print(f"home {args.home}: SFT {sft['path']}; {pairs.height} offline pairs "
          f"({dict(pairs.group_by('method').len().iter_rows())}); {sft_dev.height} dev answers; judge {judge.name}; "
          f"SFT dev language match {language_match_rate(sft_dev, prompts):.3f}", flush=True)

    oracle_pairs = None
    results, models = [], {}
    print(HEADER, flush=True)
    for name in [v for v in args.variants.split(",") if v]:
        overrides, source, methods = VARIANTS[name]
        dpo_cfg = cfg.training.dpo.model_copy(update=BASE | overrides)
        DPOStageConfig.model_validate(dpo_cfg.model_dump())  # overrides get the same checks as the YAML
        rows = pairs.filter(pl.col("method").is_in(list(methods)))
        if source == "oracle":
            if oracle_pairs is None:
                oracle_pairs, ostats = oracle_best_worst(wh, prompts, pairs.filter(pl.col("method") == "best_worst"), "arbiter")
                print(f"oracle best_worst: {json.dumps(ostats)}", flush=True)
            rows = pl.concat([oracle_pairs, rows.filter(pl.col("method") != "best_worst")], how="diagonal_relaxed")
        out = work / "models" / name
        started = time.perf_counter()
        metrics = train_dpo(sft["path"], rows, out, dpo_cfg, progress=False)
        seconds = metrics.get("seconds") or time.perf_counter() - started
        models[name] = out
        answers, _ = dev_answers(out, prompts, sampling, work / "dev", RUN_ID, batch)
        judged, _ = judge_on_dev(judge, prompts, answers, sft_dev, f"ablate:{name}", sft["checkpoint_id"], "dev_ablate", RUN_ID)
        figures = dev_figures(judged, wr_cfg)
        extra = {"language_match": language_match_rate(answers, prompts), "identical": identical(answers, sft_dev),
                 "pairs": len(rows), "seconds": float(seconds)}
        print(row_text(name, figures, extra), flush=True)
        results.append({"variant": name, "source": source, "methods": list(methods), "config": BASE | overrides,
                        "dev": figures, **extra, "train_loss": metrics.get("train_loss"),
                        "rewards/accuracies": metrics.get("rewards/accuracies"), "rewards/margins": metrics.get("rewards/margins")})

    reports = []
    if args.eval:
        print("\nREPORT ONLY (eval split; not used for any choice): each variant vs arbitrage SFT", flush=True)
        esamp = cfg.evaluation.sampling
        sft_eval, _ = answer_eval(sft, prompts, esamp, work / "eval", RUN_ID, cfg.evaluation.batch_size)
        print(HEADER, flush=True)
        for name in [v for v in args.eval.split(",") if v]:
            if name not in models:
                sys.exit(f"--eval {name}: train it in this run (add it to --variants)")
            ck = {"checkpoint_id": f"ablate:{name}", "path": str(models[name])}
            answers, _ = answer_eval(ck, prompts, esamp, work / "eval", RUN_ID, cfg.evaluation.batch_size)
            judged, _ = judge_against_baseline(judge, prompts, answers, sft_eval, ck["checkpoint_id"], sft["checkpoint_id"],
                                               "REPORT eval", RUN_ID, opponent="sft_arbitrage")
            figures = dev_figures(judged, wr_cfg)  # the same figures, here over the eval prompts
            extra = {"language_match": language_match_rate(answers, prompts), "identical": identical(answers, sft_eval),
                     "pairs": next(r["pairs"] for r in results if r["variant"] == name),
                     "seconds": next(r["seconds"] for r in results if r["variant"] == name)}
            print(row_text(name, figures, extra), flush=True)
            reports.append({"variant": name, "eval": figures, **extra})

    if args.json:
        Path(args.json).write_text(json.dumps({"home": args.home, "dev": results, "eval_report": reports}, indent=1, default=str))


if __name__ == "__main__":
    main()
