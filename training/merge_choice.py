"""The merge merged_model keeps, chosen on the dev split.

Each candidate of the `merge` section (`MergeSettings.candidates`) is merged into a work folder,
answers the dev prompts of every cluster's own languages (greedy, `training.online.dev_answers`), and
is judged head to head against that cluster's model on them (`judge_on_dev`: the evaluation's judge,
dev split only, never eval). The cluster models' dev answers are generated once. The candidate with
the highest pooled dev win rate over all those prompts is kept (`pick_candidate`: ties go to the
first listed) and moved to the output folder; the work folders are removed. Without candidates this is
the one merge the section describes, exactly as before candidates existed.

This mirrors the evaluation's comparison of merged against each cluster model on its own languages
(`factory.evaluation`), on dev instead of eval: the issue's bar is "merged at least as good as each
specialist on its languages", and nothing may be tuned on eval.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from factory.evaluation import CLUSTER_SPECIALISTS, cluster_opponent
from factory.generation.base import SamplingConfig
from factory.winrates import WinRateConfig
from training.merge import MergeSettings, merge_with_settings
from training.merge.config import candidate_label
from training.online import dev_answers, dev_counts, dev_figures, judge_on_dev, pick_candidate

DEV_STAGE = "dev_merged"  # the judgments' stage of a candidate's dev head-to-heads
POOLED = ("n", "wins", "ties", "losses", "win_rate")


@dataclass
class MergeChoice:
    settings: MergeSettings  # the kept merge's settings (the section itself without candidates)
    info: dict  # merge_with_settings's info for the kept merge; `output` is the final folder
    record: dict | None  # every candidate's dev figures and the pick (None without candidates)
    judgments: pl.DataFrame  # every candidate's dev verdicts (stage DEV_STAGE, `opponent` = cluster_<name>)
    quarantine: pl.DataFrame


def choose_merge(
    settings: MergeSettings,
    models: dict[str, str | Path],
    own_languages: dict[str, tuple[str, ...]],
    out_dir: str | Path,
    work_dir: str | Path,
    answer_dir: str | Path,
    prompts: pl.DataFrame,
    judge,
    sampling: SamplingConfig,
    run_id: str,
    base: str | Path | None = None,
    batch_size: int = 32,
    winrates: WinRateConfig | None = None,
    model_ids: dict[str, str] | None = None,
) -> MergeChoice:
    """Merge `models` (cluster name -> folder) into `out_dir`, choosing among `settings.candidates` on dev.

    `own_languages` maps each cluster to the languages its model is compared on (its own, without the
    shared ones); `model_ids` (cluster -> checkpoint id) names the opponents in the verdicts.
    `answer_dir` keeps the dev answers' resumable shards; `work_dir` holds the candidate merges and
    is removed. `base` is used by the candidates whose method needs one.
    """
    candidates = settings.to_try()
    if not candidates:
        info = merge_with_settings(settings, models, out_dir, base=base)
        return MergeChoice(settings, info, None, pl.DataFrame(), pl.DataFrame())
    missing = sorted(set(models) - set(own_languages))
    if missing:
        raise ValueError(f"no own languages given for cluster model(s) {missing}")
    model_ids = model_ids or {}
    dev = prompts.filter(pl.col("split") == "dev")
    own_dev = {name: dev.filter(pl.col("language").is_in(list(own_languages[name]))) for name in models}
    own_dev = {name: p for name, p in own_dev.items() if p.height}
    if not own_dev:
        raise ValueError("merge candidates need dev prompts in the cluster models' own languages; there are none")
    all_dev = pl.concat(list(own_dev.values())).unique("prompt_id", maintain_order=True)
    answer_dir, work_dir, out_dir = Path(answer_dir), Path(work_dir), Path(out_dir)
    quarantined, verdicts = [], []
    specialists = {}
    for name, p in own_dev.items():  # the opponents' answers, once for every candidate
        specialists[name], q = dev_answers(models[name], p, sampling, answer_dir, run_id, batch_size)
        quarantined.append(q)

    rows, infos = [], []
    shutil.rmtree(work_dir, ignore_errors=True)
    try:
        for i, cand in enumerate(candidates):
            folder = work_dir / f"candidate_{i}"
            info = merge_with_settings(cand, models, folder, base=base)
            answers, q = dev_answers(folder, all_dev, sampling, answer_dir, run_id, batch_size)
            quarantined.append(q)
            judged, by_cluster = [], {}
            for name, p in own_dev.items():
                j, q = judge_on_dev(
                    judge,
                    p,
                    answers,
                    specialists[name],
                    f"merge_candidate_{i}",
                    model_ids.get(name, name),
                    DEV_STAGE,
                    run_id,
                    opponent=cluster_opponent(name),
                )
                j = j.with_columns(pl.lit(i).alias("candidate"))
                judged.append(j)
                quarantined.append(q)
                by_cluster[name] = dev_counts(j)
            verdicts += judged
            rows.append(
                {
                    "candidate": i,
                    "label": candidate_label(cand),
                    "settings": cand.recorded(),
                    "dev": pooled_figures(judged, winrates),
                    "dev_by_cluster": by_cluster,
                    "merge_seconds": info.get("seconds"),
                }
            )
            infos.append(info)
        best = pick_candidate(rows)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work_dir / f"candidate_{best}", out_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    record = {
        "kept": best,
        "kept_label": rows[best]["label"],
        "split": "dev",
        "judge": getattr(judge, "name", str(judge)),
        "rule": "highest pooled dev win rate against each cluster model on its own languages; ties to the first listed",
        "candidates": rows,
    }
    info = infos[best] | {"output": str(out_dir)}
    return MergeChoice(
        candidates[best],
        info,
        record,
        pl.concat(verdicts, how="diagonal_relaxed"),
        pl.concat(quarantined, how="diagonal_relaxed"),
    )


def pooled_figures(judged: list[pl.DataFrame], winrates: WinRateConfig | None = None) -> dict:
    """`dev_figures` over the verdicts against every cluster model at once: pooled over all prompts, and
    the macro average over all their languages (one opponent, so win_rates makes one "all" row)."""
    frame = pl.concat(judged, how="diagonal_relaxed").with_columns(
        pl.lit(CLUSTER_SPECIALISTS).alias("opponent"), pl.lit(CLUSTER_SPECIALISTS).alias("baseline")
    )
    return dev_figures(frame, winrates)


def candidates_table(record: dict) -> pl.DataFrame:
    """One row per candidate: label, pooled dev W/T/L and win rate, macro with CI, and each cluster's win rate."""
    rows = []
    for c in record["candidates"]:
        dev = c["dev"]
        row = {"candidate": c["candidate"], "merge": c["label"], "kept": c["candidate"] == record["kept"]}
        row |= {k: dev.get(k) for k in POOLED}
        row |= {k: dev.get(k) for k in ("macro_win_rate", "macro_ci_low", "macro_ci_high")}
        row |= {f"vs_{name}": f.get("win_rate") for name, f in c["dev_by_cluster"].items()}
        rows.append(row)
    return pl.DataFrame(rows)
