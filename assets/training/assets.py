"""Training stages: arbitrage SFT, the single-teacher baseline, offline DPO, three online DPO
rounds, language-cluster models and their merge. Every model is a row in `checkpoints`."""

import dagster as dg
import polars as pl

from assets.common import checkpoint_frame, find_model, model_folder, only
from assets.resources import FactoryResource
from warehouse.status import markdown_table

CHECKPOINTS = {"table": "checkpoints"}


def base_model(cfg, pool: pl.DataFrame, home) -> tuple[str, list[str]]:
    """The base model's path and parent checkpoint ids (embedded:base, a user's causal LM, or a
    gguf:/pkg: source converted into a folder)."""
    if cfg.training.base_model == "embedded:base":
        row = find_model(pool, "base")
        return row["path"], [row["checkpoint_id"]]
    return model_folder(cfg.training.base_model, home)


def _sft(context, factory: FactoryResource, sft_data: pl.DataFrame, pool: pl.DataFrame, strategy: str, name: str):
    from training.sft import train_sft

    cfg = factory.settings()
    wh = factory.warehouse()
    base, parents = base_model(cfg, pool, wh.home)
    rows = sft_data.filter(pl.col("strategy") == strategy)
    out = wh.dir("models") / name
    metrics = train_sft(base, rows, out, cfg.training.sft)
    context.add_output_metadata(train_metadata(metrics))
    return checkpoint_frame([{
        "stage": "sft", "name": name, "path": out, "parents": parents,
        "datasets": {"sft_data": wh.version("sft_data"), "strategy": strategy},
        "config": cfg.training.sft.model_dump(), "metrics": metrics,
    }], context.run_id)


def train_metadata(metrics: dict) -> dict:
    keys = ("train_loss", "first_loss", "final_loss", "steps", "seconds", "n_examples", "device", "reused",
            "rewards/accuracies", "rewards/margins")
    return {k.replace("/", "_"): metrics[k] for k in keys if k in metrics and metrics[k] is not None}


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def sft_model(context: dg.AssetExecutionContext, factory: FactoryResource, sft_data: pl.DataFrame, embedded_pool: pl.DataFrame):
    """TRL SFTTrainer (completion-only loss) on the arbitrage SFT data (reward routing by default)."""
    return _sft(context, factory, sft_data, embedded_pool, factory.settings().arbitrage.sft_strategy, "sft_model")


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def sft_model_single_teacher(
    context: dg.AssetExecutionContext, factory: FactoryResource, sft_data: pl.DataFrame, embedded_pool: pl.DataFrame
):
    """The same SFT recipe on the single best teacher's data: the baseline every stage is judged against."""
    return _sft(context, factory, sft_data, embedded_pool, factory.settings().arbitrage.baseline_strategy, "sft_model_single_teacher")


def _dpo(context, factory: FactoryResource, policy: dict, pairs: pl.DataFrame, name: str, stage: str, dpo_cfg, datasets: dict):
    from training.dpo import train_dpo

    out = factory.warehouse().dir("models") / name
    metrics = train_dpo(policy["path"], pairs, out, dpo_cfg)
    context.add_output_metadata(train_metadata(metrics))
    return checkpoint_frame([{
        "stage": stage, "name": name, "path": out, "parents": [policy["checkpoint_id"]],
        "datasets": datasets, "config": dpo_cfg.model_dump(), "metrics": metrics,
    }], context.run_id)


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def dpo_offline_model(
    context: dg.AssetExecutionContext, factory: FactoryResource, sft_model: pl.DataFrame, preference_pairs: pl.DataFrame
):
    """TRL DPOTrainer from sft_model (frozen copy as reference) on the offline pairs (best_worst,
    plus native_vs_translated when configured)."""
    cfg = factory.settings()
    pairs = preference_pairs.filter(pl.col("method").is_in(cfg.training.dpo_methods))
    datasets = {"preference_pairs": factory.warehouse().version("preference_pairs"), "methods": cfg.training.dpo_methods}
    return _dpo(context, factory, only(sft_model), pairs, "dpo_offline_model", "dpo_offline", cfg.training.dpo, datasets)


def online_round_assets(k: int, previous: str):
    """Round k's data (`online_pairs_round_k`) and model (`dpo_online_round_k`), as their own assets.

    The descriptions go to the decorators: a docstring set after decoration never reaches the UI.
    """
    pairs_description = (
        f"Online round {k} data: training.online.k samples per training prompt from {previous} (the current policy), "
        "ranked by the Arbiter, best vs worst (method `online`, round "
        f"{k}; rows in preference_pairs under producer=online_pairs_round_{k}). Metadata tracks the policy's "
        "held-out reward, length and language match, so reward hacking shows round by round."
    )
    model_description = (
        f"Online DPO round {k}: TRL DPOTrainer from {previous} (frozen copy as reference) on "
        f"online_pairs_round_{k}, with round {k}'s beta (training.online.betas)."
    )

    @dg.asset(
        name=f"online_pairs_round_{k}", io_manager_key="warehouse", metadata={"table": "preference_pairs"},
        group_name="training", kinds={"pytorch"}, ins={"policy": dg.AssetIn(previous)},
        description=pairs_description,
    )
    def online_pairs(context: dg.AssetExecutionContext, factory: FactoryResource, policy: pl.DataFrame,
                     prompts: pl.DataFrame, arbiter: pl.DataFrame) -> pl.DataFrame:
        from assets.arbitrage.assets import arbiter_scorer
        from training.online import online_round

        cfg = factory.settings()
        wh = factory.warehouse()
        pol = only(policy)
        scorer, _ = arbiter_scorer(cfg, arbiter)
        on = cfg.training.online
        result = online_round(
            k, f"online{k}@{pol['checkpoint_id']}", pol["path"], prompts, scorer, cfg.scoring.fidelity, on.k,
            on.sampling, wh.dir("staging", f"online_round_{k}"), context.run_id, on.batch_size,
            cfg.pairs.best_worst.min_margin,
        )
        # Keep the round's completions and scores for lineage (pair -> completion -> prompt).
        wh.write_table("generations", result.generations, {"producer": f"online_pairs_round_{k}"})
        wh.write_table("scores", result.scores, {"producer": f"online_pairs_round_{k}"})
        wh.quarantine(f"online_pairs_round_{k}", None, result.quarantine, context.run_id)
        h = result.heldout
        per_lang = pl.DataFrame(h.get("per_language", []))
        context.add_output_metadata({
            "heldout_mean_reward": h.get("mean_reward", float("nan")),
            "heldout_mean_tokens": h.get("mean_tokens", float("nan")),
            "heldout_language_match_rate": h.get("language_match_rate", float("nan")),
            "heldout_per_language": dg.MetadataValue.md(markdown_table(per_lang)) if per_lang.height else "",
            "pair_stats": dg.MetadataValue.json(result.pair_stats),
        })
        return result.pairs.with_columns(
            pl.lit(h.get("mean_reward")).alias("policy_heldout_reward"),
            pl.lit(h.get("mean_tokens")).alias("policy_heldout_tokens"),
            pl.lit(h.get("language_match_rate")).alias("policy_heldout_language_match"),
        )

    @dg.asset(
        name=f"dpo_online_round_{k}", io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training",
        kinds={"pytorch"}, ins={"policy": dg.AssetIn(previous), "pairs": dg.AssetIn(f"online_pairs_round_{k}")},
        description=model_description,
    )
    def dpo_online(context: dg.AssetExecutionContext, factory: FactoryResource, policy: pl.DataFrame, pairs: pl.DataFrame):
        cfg = factory.settings()
        on = cfg.training.online
        dpo_cfg = on.dpo.model_copy(update={"beta": on.betas[k - 1]})
        datasets = {f"online_pairs_round_{k}": factory.warehouse().version("preference_pairs", {"producer": f"online_pairs_round_{k}"})}
        return _dpo(context, factory, only(policy), pairs, f"dpo_online_round_{k}", f"dpo_online_{k}", dpo_cfg, datasets)

    return [online_pairs, dpo_online]


ONLINE_ASSETS = (
    online_round_assets(1, "dpo_offline_model") + online_round_assets(2, "dpo_online_round_1")
    + online_round_assets(3, "dpo_online_round_2")
)


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def cluster_models(
    context: dg.AssetExecutionContext, factory: FactoryResource, sft_data: pl.DataFrame, preference_pairs: pl.DataFrame,
    embedded_pool: pl.DataFrame,
):
    """One model per language cluster (its languages plus en/es/fr), trained with the same recipe
    (SFT, then offline DPO) on that cluster's data: diverse checkpoints to merge."""
    from factory.languages import CLUSTERS, own_languages
    from training.dpo import train_dpo
    from training.sft import train_sft

    cfg = factory.settings()
    wh = factory.warehouse()
    base, parents = base_model(cfg, embedded_pool, factory.warehouse().home)
    records, summary = [], []
    for cluster, members in CLUSTERS.items():
        if not set(own_languages(cluster)) & set(cfg.languages):
            continue
        sft_rows = sft_data.filter((pl.col("strategy") == cfg.arbitrage.sft_strategy) & pl.col("language").is_in(members))
        pairs = preference_pairs.filter(pl.col("language").is_in(members) & pl.col("method").is_in(cfg.training.dpo_methods))
        sft_dir = wh.dir("models", "clusters") / f"{cluster}_sft"
        out = wh.dir("models", "clusters") / cluster
        sft_metrics = train_sft(base, sft_rows, sft_dir, cfg.training.sft)
        dpo_metrics = train_dpo(sft_dir, pairs, out, cfg.training.dpo)
        records.append({
            "stage": "cluster", "name": cluster, "path": out, "parents": parents,
            "datasets": {"sft_data": wh.version("sft_data"), "preference_pairs": wh.version("preference_pairs"),
                         "languages": list(members)},
            "config": {"sft": cfg.training.sft.model_dump(), "dpo": cfg.training.dpo.model_dump()},
            "metrics": {"sft": sft_metrics, "dpo": dpo_metrics},
        })
        summary.append({"cluster": cluster, "sft_rows": sft_rows.height, "pairs": pairs.height,
                        "sft_loss": sft_metrics.get("final_loss"), "dpo_loss": dpo_metrics.get("final_loss")})
    context.add_output_metadata({"clusters": dg.MetadataValue.md(markdown_table(pl.DataFrame(summary)))})
    return checkpoint_frame(records, context.run_id)


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def merged_model(
    context: dg.AssetExecutionContext, factory: FactoryResource, cluster_models: pl.DataFrame, embedded_pool: pl.DataFrame
):
    """The cluster models merged into one (weighted linear averaging by default, the method Aya
    kept; slerp, ties, dare_ties and dare_linear by config), streamed tensor by tensor."""
    from training.merge.run import merge_models

    cfg = factory.settings()
    m = cfg.merge
    names = cluster_models["name"].to_list()
    paths = cluster_models["path"].to_list()
    weights = [m.weights.get(n, 1.0) for n in names]
    out = factory.warehouse().dir("models") / "merged_model"
    base = None
    if m.method in ("ties", "dare_ties", "dare_linear"):
        base = base_model(cfg, embedded_pool, factory.warehouse().home)[0]
    params = {"t": m.t} if m.method == "slerp" else {}
    info = merge_models(paths, m.method, out, weights=weights, base=base,
                        densities=[m.density] * len(paths) if m.method in ("ties", "dare_ties", "dare_linear") else None,
                        seed=m.seed, **params)
    context.add_output_metadata({"method": m.method, "inputs": dg.MetadataValue.json(names), "seconds": float(info.get("seconds", 0.0))})
    return checkpoint_frame([{
        "stage": "merged", "name": "merged_model", "path": out, "parents": cluster_models["checkpoint_id"].to_list(),
        "datasets": {}, "config": {**m.model_dump(), "models": names}, "metrics": {k: v for k, v in info.items() if k != "config"},
    }], context.run_id)


TRAINING_ASSETS = [sft_model, sft_model_single_teacher, dpo_offline_model, *ONLINE_ASSETS, cluster_models, merged_model]
