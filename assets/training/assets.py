"""Training stages: arbitrage SFT, the single-teacher baseline, offline DPO, three online DPO
rounds, language-cluster models and their merge. Every model is a row in `checkpoints`."""

import dagster as dg
import polars as pl

from assets.common import arbiter_scorer, checkpoint_frame, model_folder, only
from assets.io_manager import SIDE_OUTPUT
from assets.resources import FactoryResource
from training.clusters import train_cluster_models
from training.dpo import train_dpo
from training.merge import get_method, merge_with_settings
from training.online import online_round
from training.sft import train_sft
from warehouse.status import markdown_table

CHECKPOINTS = {"table": "checkpoints"}


def _sft(context, env: FactoryResource, sft_data: pl.DataFrame, pool: pl.DataFrame, strategy: str, name: str):
    cfg = env.settings()
    wh = env.warehouse()
    base, parents = model_folder(cfg.training.base_model, wh.home, pool)
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
def sft_model(context: dg.AssetExecutionContext, env: FactoryResource, sft_data: pl.DataFrame, embedded_pool: pl.DataFrame):
    """TRL SFTTrainer (completion-only loss) on the arbitrage SFT data (reward routing by default)."""
    return _sft(context, env, sft_data, embedded_pool, env.settings().arbitrage.sft_strategy, "sft_model")


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def sft_model_single_teacher(
    context: dg.AssetExecutionContext, env: FactoryResource, sft_data: pl.DataFrame, embedded_pool: pl.DataFrame
):
    """The same SFT recipe on the single best teacher's data: the baseline every stage is judged against."""
    return _sft(context, env, sft_data, embedded_pool, env.settings().arbitrage.baseline_strategy, "sft_model_single_teacher")


def _dpo(context, env: FactoryResource, policy: dict, pairs: pl.DataFrame, name: str, stage: str, dpo_cfg, datasets: dict):
    out = env.warehouse().dir("models") / name
    metrics = train_dpo(policy["path"], pairs, out, dpo_cfg)
    context.add_output_metadata(train_metadata(metrics))
    return checkpoint_frame([{
        "stage": stage, "name": name, "path": out, "parents": [policy["checkpoint_id"]],
        "datasets": datasets, "config": dpo_cfg.model_dump(), "metrics": metrics,
    }], context.run_id)


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def dpo_offline_model(
    context: dg.AssetExecutionContext, env: FactoryResource, sft_model: pl.DataFrame, preference_pairs: pl.DataFrame
):
    """TRL DPOTrainer from sft_model (frozen copy as reference) on the offline pairs (best_worst,
    plus native_vs_translated when configured)."""
    cfg = env.settings()
    pairs = preference_pairs.filter(pl.col("method").is_in(cfg.training.dpo_methods))
    datasets = {"preference_pairs": env.warehouse().version("preference_pairs"), "methods": cfg.training.dpo_methods}
    return _dpo(context, env, only(sft_model), pairs, "dpo_offline_model", "dpo_offline", cfg.training.dpo, datasets)


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

    producer = {"producer": f"online_pairs_round_{k}"}  # the round's completions and scores, kept for lineage
    outs = {
        f"online_pairs_round_{k}": dg.AssetOut(
            io_manager_key="warehouse", metadata={"table": "preference_pairs"}, kinds={"pytorch"}, description=pairs_description),
        f"online_generations_round_{k}": dg.AssetOut(
            io_manager_key="warehouse", metadata={SIDE_OUTPUT: True, "table": "generations", **producer}, kinds={"pytorch"},
            description=f"Round {k}'s policy samples (rows of `generations`): what its pairs are made of."),
        f"online_scores_round_{k}": dg.AssetOut(
            io_manager_key="warehouse", metadata={SIDE_OUTPUT: True, "table": "scores", **producer}, kinds={"pytorch"},
            description=f"The Arbiter's scores of round {k}'s samples (rows of `scores`)."),
    }

    @dg.multi_asset(name=f"online_round_{k}_data", outs=outs, group_name="training", ins={"policy": dg.AssetIn(previous)})
    def online_pairs(context: dg.AssetExecutionContext, env: FactoryResource, policy: pl.DataFrame,
                     prompts: pl.DataFrame, arbiter: pl.DataFrame):
        cfg = env.settings()
        wh = env.warehouse()
        pol = only(policy)
        on = cfg.training.online
        result = online_round(
            k, f"online{k}@{pol['checkpoint_id']}", pol["path"], prompts, arbiter_scorer(cfg, arbiter)[0],
            cfg.scoring.fidelity, on.k, on.sampling, wh.dir("staging", f"online_round_{k}"), context.run_id, on.batch_size,
            cfg.pairs.best_worst.min_margin,
        )
        wh.quarantine(f"online_pairs_round_{k}", None, result.quarantine, context.run_id)
        yield dg.Output(result.generations, output_name=f"online_generations_round_{k}")
        yield dg.Output(result.scores, output_name=f"online_scores_round_{k}")
        yield dg.Output(with_heldout(result.pairs, result.heldout), output_name=f"online_pairs_round_{k}",
                        metadata={**heldout_metadata(result.heldout), "pair_stats": dg.MetadataValue.json(result.pair_stats)})

    @dg.asset(
        name=f"dpo_online_round_{k}", io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training",
        kinds={"pytorch"}, ins={"policy": dg.AssetIn(previous), "pairs": dg.AssetIn(f"online_pairs_round_{k}")},
        description=model_description,
    )
    def dpo_online(context: dg.AssetExecutionContext, env: FactoryResource, policy: pl.DataFrame, pairs: pl.DataFrame):
        cfg = env.settings()
        on = cfg.training.online
        dpo_cfg = on.dpo.model_copy(update={"beta": on.betas[k - 1]})
        datasets = {f"online_pairs_round_{k}": env.warehouse().version("preference_pairs", {"producer": f"online_pairs_round_{k}"})}
        return _dpo(context, env, only(policy), pairs, f"dpo_online_round_{k}", f"dpo_online_{k}", dpo_cfg, datasets)

    return [online_pairs, dpo_online]


def with_heldout(pairs: pl.DataFrame, h: dict) -> pl.DataFrame:
    """The round's pairs with the policy's held-out reward, length and language match on every row."""
    return pairs.with_columns(
        pl.lit(h.get("mean_reward")).alias("policy_heldout_reward"),
        pl.lit(h.get("mean_tokens")).alias("policy_heldout_tokens"),
        pl.lit(h.get("language_match_rate")).alias("policy_heldout_language_match"),
    )


def heldout_metadata(h: dict) -> dict:
    per_lang = pl.DataFrame(h.get("per_language", []))
    return {
        "heldout_mean_reward": h.get("mean_reward", float("nan")),
        "heldout_mean_tokens": h.get("mean_tokens", float("nan")),
        "heldout_language_match_rate": h.get("language_match_rate", float("nan")),
        "heldout_per_language": dg.MetadataValue.md(markdown_table(per_lang)) if per_lang.height else "",
    }


ONLINE_ASSETS = (
    online_round_assets(1, "dpo_offline_model") + online_round_assets(2, "dpo_online_round_1")
    + online_round_assets(3, "dpo_online_round_2")
)


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def cluster_models(
    context: dg.AssetExecutionContext, env: FactoryResource, sft_data: pl.DataFrame, preference_pairs: pl.DataFrame,
    embedded_pool: pl.DataFrame,
):
    """One model per language cluster (its languages plus en/es/fr), trained with the same recipe
    (SFT, then offline DPO) on that cluster's data: diverse checkpoints to merge."""
    cfg = env.settings()
    wh = env.warehouse()
    base, parents = model_folder(cfg.training.base_model, wh.home, embedded_pool)
    records, summary = train_cluster_models(
        base, sft_data, preference_pairs, cfg.languages, wh.dir("models", "clusters"), cfg.training, cfg.arbitrage.sft_strategy
    )
    datasets = {"sft_data": wh.version("sft_data"), "preference_pairs": wh.version("preference_pairs")}
    context.add_output_metadata({"clusters": dg.MetadataValue.md(markdown_table(pl.DataFrame(summary)))})
    return checkpoint_frame([
        {"stage": "cluster", "parents": parents, "datasets": {**datasets, "languages": r.pop("languages")}, **r}
        for r in records
    ], context.run_id)


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def merged_model(
    context: dg.AssetExecutionContext, env: FactoryResource, cluster_models: pl.DataFrame, embedded_pool: pl.DataFrame
):
    """The cluster models merged into one (weighted linear averaging by default, the method Aya
    kept; slerp, ties, dare_ties and dare_linear by config), streamed tensor by tensor."""
    cfg = env.settings()
    m = cfg.merge
    names = cluster_models["name"].to_list()
    out = env.warehouse().dir("models") / "merged_model"
    home = env.warehouse().home
    base = model_folder(cfg.training.base_model, home, embedded_pool)[0] if get_method(m.method).needs_base else None
    info = merge_with_settings(m, dict(zip(names, cluster_models["path"].to_list(), strict=True)), out, base=base)
    context.add_output_metadata({"method": m.method, "inputs": dg.MetadataValue.json(names), "seconds": float(info.get("seconds", 0.0))})
    return checkpoint_frame([{
        "stage": "merged", "name": "merged_model", "path": out, "parents": cluster_models["checkpoint_id"].to_list(),
        "datasets": {}, "config": {**m.model_dump(), "models": names}, "metrics": {k: v for k, v in info.items() if k != "config"},
    }], context.run_id)


TRAINING_ASSETS = [sft_model, sft_model_single_teacher, dpo_offline_model, *ONLINE_ASSETS, cluster_models, merged_model]
