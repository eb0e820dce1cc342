"""Language-cluster models: one model per cluster (its own languages plus en/es/fr), trained with
the same recipe as the main line (SFT, then offline DPO) on that cluster's rows, to be merged."""

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


def train_cluster_models(
    base: str | Path, sft_data: pl.DataFrame, pairs: pl.DataFrame, languages: list[str], out_dir: Path,
    cfg: TrainingConfig, sft_strategy: str,
) -> tuple[list[dict], list[dict]]:
    """(a record per cluster model: name, path, languages, config, metrics; a summary row per cluster).

    `pairs` are the offline preference pairs; only `cfg.dpo_methods` are used."""
    records, summary = [], []
    for cluster, members in run_clusters(languages).items():
        sft_rows = sft_data.filter((pl.col("strategy") == sft_strategy) & pl.col("language").is_in(members))
        mine = pairs.filter(pl.col("language").is_in(members) & pl.col("method").is_in(cfg.dpo_methods))
        sft_dir, out = out_dir / f"{cluster}_sft", out_dir / cluster
        sft_metrics = train_sft(base, sft_rows, sft_dir, cfg.sft)
        dpo_metrics = train_dpo(sft_dir, mine, out, cfg.dpo)
        records.append({
            "name": cluster, "path": out, "languages": list(members),
            "config": {"sft": cfg.sft.model_dump(), "dpo": cfg.dpo.model_dump()},
            "metrics": {"sft": sft_metrics, "dpo": dpo_metrics},
        })
        summary.append({"cluster": cluster, "sft_rows": sft_rows.height, "pairs": mine.height,
                        "sft_loss": sft_metrics.get("final_loss"), "dpo_loss": dpo_metrics.get("final_loss")})
    return records, summary
