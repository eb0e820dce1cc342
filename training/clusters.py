"""Language-cluster models: one model per cluster (its own languages plus en/es/fr), to be merged.

Each starts from `start` (the pretrained base, or the arbitrage SFT model: `training.clusters.start`),
optionally does SFT on its cluster's rows (`training.clusters.sft`), then offline DPO on its cluster's
pairs, with the main line's stage settings."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from factory.languages import CLUSTERS, own_languages
from training.config import TrainingConfig
from training.dpo import train_dpo
from training.sft import train_sft


def run_clusters(languages: list[str]) -> dict[str, tuple[str, ...]]:
    """The clusters that get a model: those with at least one of the run's languages of their own."""
    return {c: tuple(m) for c, m in CLUSTERS.items() if set(own_languages(c)) & set(languages)}


def cluster_recipe(cfg: TrainingConfig) -> dict:
    """What a cluster model's checkpoint records as its config (so its id changes with the recipe):
    the start, the SFT stage settings (None when the cluster SFT step is off) and the DPO settings."""
    return {
        "start": cfg.clusters.start,
        "sft": cfg.sft.model_dump() if cfg.clusters.sft else None,
        "dpo": cfg.dpo.model_dump(),
    }


def train_cluster_models(
    start: str | Path, sft_data: pl.DataFrame, pairs: pl.DataFrame, languages: list[str], out_dir: Path,
    cfg: TrainingConfig, sft_strategy: str,
) -> tuple[list[dict], list[dict]]:
    """(a record per cluster model: name, path, languages, config, metrics; a summary row per cluster).

    Every cluster model starts from the model folder `start` (the one `cfg.clusters.start` names);
    `pairs` are the offline preference pairs, of which only `cfg.dpo_methods` are used."""
    records, summary = [], []
    recipe = cluster_recipe(cfg)
    for cluster, members in run_clusters(languages).items():
        sft_rows = sft_data.filter((pl.col("strategy") == sft_strategy) & pl.col("language").is_in(members))
        mine = pairs.filter(pl.col("language").is_in(members) & pl.col("method").is_in(cfg.dpo_methods))
        out = out_dir / cluster
        metrics = {}
        policy = start
        if cfg.clusters.sft:
            policy = out_dir / f"{cluster}_sft"
            metrics["sft"] = train_sft(start, sft_rows, policy, cfg.sft)
        metrics["dpo"] = train_dpo(policy, mine, out, cfg.dpo)
        records.append({"name": cluster, "path": out, "languages": list(members), "config": recipe, "metrics": metrics})
        summary.append({
            "cluster": cluster, "sft_rows": sft_rows.height if cfg.clusters.sft else 0, "pairs": mine.height,
            "sft_loss": metrics.get("sft", {}).get("final_loss"), "dpo_loss": metrics["dpo"].get("final_loss"),
            "seconds": sum(float(m.get("seconds") or 0.0) for m in metrics.values()),
        })
    return records, summary
