"""Training stages: arbitrage SFT, the single-teacher baseline, offline DPO, three online DPO
rounds (decided on the dev split, see training.online), language-cluster models and their merge.
Every model is a row in `checkpoints`."""

import json

import dagster as dg
import polars as pl

from assets.common import arbiter_scorer, checkpoint_frame, decontaminated_prompts, model_folder, only
from assets.evaluation.assets import configured_judge
from assets.io_manager import SIDE_OUTPUT
from assets.resources import FactoryResource, ModelServers
from factory.languages import own_languages
from training.clusters import train_cluster_models
from training.dpo import train_dpo
from training.merge import get_method
from training.merge_choice import candidates_table, choose_merge
from training.online import (
    SKIPPED,
    STOP,
    dev_answers,
    dev_decision,
    dev_drift,
    dev_figures,
    judge_on_dev,
    online_round,
    pick_candidate,
    round_record,
    stopped_at,
)
from training.sft import train_sft
from warehouse import schemas
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
        "ranked by the Arbiter and paired with the language guard: best vs worst among right-language answers, or "
        "the best right-language answer vs the Arbiter's favourite when that one is in the wrong language (column "
        f"`rule`; method `online`, round {k}; rows in preference_pairs under producer=online_pairs_round_{k}). "
        "Metadata tracks the policy's reward, length and language match on the dev prompts. Empty when an earlier "
        "round stopped the online rounds."
    )
    model_description = (
        f"Online DPO round {k}: TRL DPOTrainer from {previous} (frozen copy as reference) on "
        f"online_pairs_round_{k}, once per beta candidate of round {k} (training.online.betas). Each candidate is "
        f"judged head to head against {previous} on the dev prompts by the evaluation's judge (never the Arbiter, "
        "never eval prompts); the best is kept unless its dev win rate is below training.online.stop_below, which "
        f"stops the rounds: then this checkpoint is {previous}'s policy (same folder, metrics.online.decision says "
        "so) and later rounds are skipped."
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
        stopped = stopped_at(online_state(pol))
        if stopped is not None:  # nothing to sample: the rounds stopped, the policy stays as it was
            note = f"skipped: the online rounds stopped at round {stopped}"
            wh.quarantine(f"online_pairs_round_{k}", None, schemas.rejected_frame(), context.run_id)
            yield dg.Output(schemas.empty(schemas.GENERATIONS), output_name=f"online_generations_round_{k}")
            yield dg.Output(schemas.empty(schemas.SCORES), output_name=f"online_scores_round_{k}")
            yield dg.Output(schemas.empty(schemas.PREFERENCE_PAIRS), output_name=f"online_pairs_round_{k}",
                            metadata={"decision": note})
            return
        prompts, contaminated = decontaminated_prompts(wh, prompts, cfg)
        result = online_round(
            k, f"online{k}@{pol['checkpoint_id']}", pol["path"], prompts, arbiter_scorer(cfg, arbiter)[0],
            cfg.scoring.fidelity, on.k, on.sampling, wh.dir("staging", f"online_round_{k}"), context.run_id, on.batch_size,
            cfg.pairs.best_worst.min_margin, dev_sampling=on.dev_sampling, dev_dir=wh.dir("staging", "online_dev"),
        )
        wh.quarantine(f"online_pairs_round_{k}", None, pl.concat([result.quarantine, contaminated], how="diagonal_relaxed"),
                      context.run_id)
        yield dg.Output(result.generations, output_name=f"online_generations_round_{k}")
        yield dg.Output(result.scores, output_name=f"online_scores_round_{k}")
        yield dg.Output(with_heldout(result.pairs, result.heldout), output_name=f"online_pairs_round_{k}",
                        metadata={**heldout_metadata(result.heldout), "pair_stats": dg.MetadataValue.json(result.pair_stats),
                                  "pairs_by_rule": dg.MetadataValue.json(result.pair_stats["by_rule"])})

    @dg.asset(
        name=f"dpo_online_round_{k}", io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training",
        kinds={"pytorch"}, ins={"policy": dg.AssetIn(previous), "pairs": dg.AssetIn(f"online_pairs_round_{k}")},
        description=model_description,
    )
    def dpo_online(context: dg.AssetExecutionContext, env: FactoryResource, servers: ModelServers, policy: pl.DataFrame,
                   pairs: pl.DataFrame, prompts: pl.DataFrame, arbiter: pl.DataFrame):
        record, meta = online_round_model(context.run_id, env, servers, k, only(policy), pairs, prompts, arbiter)
        context.add_output_metadata(meta)
        return checkpoint_frame([record], context.run_id)

    return [online_pairs, dpo_online]


def online_state(checkpoint: dict) -> dict | None:
    """An online round's record (metrics["online"]) from its checkpoint row; None for other models."""
    return json.loads(checkpoint.get("metrics") or "{}").get("online")


def online_round_model(run_id: str, env: FactoryResource, servers, k: int, prev: dict, pairs: pl.DataFrame,
                       prompts: pl.DataFrame, arbiter: pl.DataFrame) -> tuple[dict, dict]:
    """Round k's model: (checkpoint record, Dagster metadata). Trains every beta candidate from `prev`,
    judges each on dev against `prev`, keeps the best or stops (training.online)."""
    cfg = env.settings()
    wh = env.warehouse()
    on = cfg.training.online
    name, stage = f"dpo_online_round_{k}", f"dpo_online_{k}"
    stopped = stopped_at(online_state(prev))
    if stopped is not None:
        rec = round_record(k, f"{SKIPPED}: stopped at round {stopped}", [], None, prev, stopped)
        rec["policy_path"] = wh.relative(str(rec["policy_path"]))
        wh.quarantine(name, None, schemas.rejected_frame(), run_id)  # nothing judged: no earlier run's rows may stay
        return previous_kept(stage, name, prev, rec), {"decision": rec["decision"], "policy": str(prev["path"])}
    judge = configured_judge(cfg, wh.home, servers)
    scorer = arbiter_scorer(cfg, arbiter)[0]
    fidelity, dev_dir, sampling = cfg.scoring.fidelity, wh.dir("staging", "online_dev"), on.dev_sampling
    prev_answers, q = dev_answers(prev["path"], prompts, sampling, dev_dir, run_id, on.batch_size)
    prev_drift, q_drift = dev_drift(prev_answers, prompts, scorer, fidelity, run_id)
    quarantined = [q, q_drift]
    datasets = {f"online_pairs_round_{k}": wh.version("preference_pairs", {"producer": f"online_pairs_round_{k}"})}
    betas = on.candidates(k)
    records, candidates, drifts = [], [], [prev_drift]
    for beta in betas:
        out = wh.dir("models") / (name if len(betas) == 1 else f"{name}_beta{beta:g}")
        dpo_cfg = on.dpo.model_copy(update={"beta": beta})
        metrics = train_dpo(prev["path"], pairs, out, dpo_cfg)
        record = {"stage": stage, "name": name, "path": out, "parents": [prev["checkpoint_id"]], "datasets": datasets,
                  "config": dpo_cfg.model_dump(), "metrics": metrics}
        cid = checkpoint_frame([record], run_id)["checkpoint_id"][0]
        answers, q = dev_answers(out, prompts, sampling, dev_dir, run_id, on.batch_size)
        judged, q_judge = judge_on_dev(judge, prompts, answers, prev_answers, cid, prev["checkpoint_id"], f"dev_{stage}", run_id)
        drift, q_drift = dev_drift(answers, prompts, scorer, fidelity, run_id)
        quarantined += [q, q_judge, q_drift]
        records.append(record)
        drifts.append(drift)
        candidates.append({"beta": beta, "path": wh.relative(str(out)), "checkpoint_id": cid, "dev": dev_figures(judged, cfg.evaluation.winrates),
                           "drift": drift_summary(drift), "train": train_metadata(metrics)})
    best = pick_candidate(candidates)
    decision = dev_decision(candidates[best]["dev"], on.stop_below)
    kept = None if decision == STOP else best
    rec = round_record(k, decision, candidates, kept, prev) | {"previous_drift": drift_summary(prev_drift), "judge": judge.name}
    rec["policy_path"] = wh.relative(str(rec["policy_path"]))
    wh.quarantine(name, None, pl.concat(quarantined, how="diagonal_relaxed"), run_id)
    meta = online_metadata(rec, candidates[best], prev_drift, drifts[best + 1])
    if kept is not None:
        record = records[kept]
        record["metrics"] = {**record["metrics"], "online": rec}
        meta |= train_metadata(record["metrics"])
        return record, meta
    return previous_kept(stage, name, prev, rec), meta


def previous_kept(stage: str, name: str, prev: dict, rec: dict) -> dict:
    """The checkpoint record of a round that stopped or was skipped: the previous policy, kept as it was."""
    return {"stage": stage, "name": name, "path": prev["path"], "parents": [prev["checkpoint_id"]], "datasets": {},
            "config": {"kept_policy": prev["checkpoint_id"]}, "metrics": {"online": rec}}


def drift_summary(drift: dict) -> dict:
    """The overall figures of a drift report (its per-language table stays in the Dagster metadata)."""
    return {k: v for k, v in drift.items() if k != "per_language"}


def online_metadata(rec: dict, best: dict, prev_drift: dict, new_drift: dict) -> dict:
    """A round's decision, the best candidate's dev head-to-head and the drift of both policies on dev."""
    dev = best["dev"]
    drift = pl.DataFrame([{"policy": "previous", **drift_summary(prev_drift)}, {"policy": f"beta {best['beta']:g}", **drift_summary(new_drift)}])
    cands = pl.DataFrame([{"beta": c["beta"], **{k: c["dev"].get(k) for k in ("n", "wins", "ties", "losses", "win_rate")},
                           "dev_language_match": c["drift"].get("language_match_rate")} for c in rec["candidates"]])
    return {
        "decision": rec["decision"],
        "kept_beta": rec["kept_beta"] if rec["kept_beta"] is not None else "none (previous policy kept)",
        "dev_win_rate_vs_previous": dev["win_rate"] if dev["win_rate"] is not None else float("nan"),
        "dev_n": dev["n"], "dev_wins": dev["wins"], "dev_ties": dev["ties"], "dev_losses": dev["losses"],
        "dev_candidates": dg.MetadataValue.md(markdown_table(cands)),
        "dev_drift": dg.MetadataValue.md(markdown_table(drift)),
        "dev_figures": dg.MetadataValue.json(rec),
    }


def with_heldout(pairs: pl.DataFrame, h: dict) -> pl.DataFrame:
    """The round's pairs with the sampled policy's dev reward, length and language match on every row
    (the policy_heldout_* columns: held out = the dev prompts, never eval)."""
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
    embedded_pool: pl.DataFrame, sft_model: pl.DataFrame,
):
    """One model per language cluster (its languages plus en/es/fr): diverse checkpoints to merge. Each
    starts from training.clusters.start (the pretrained base, or sft_model: a common ancestor), does SFT
    on its cluster's rows (unless training.clusters.sft is false), then offline DPO on its cluster's pairs."""
    cfg = env.settings()
    wh = env.warehouse()
    start, parents = cluster_start_model(cfg, wh.home, embedded_pool, sft_model)
    records, summary = train_cluster_models(
        start, sft_data, preference_pairs, cfg.languages, wh.dir("models", "clusters"), cfg.training, cfg.arbitrage.sft_strategy
    )
    datasets = {"preference_pairs": wh.version("preference_pairs")}
    if cfg.training.clusters.sft:
        datasets["sft_data"] = wh.version("sft_data")
    started = {"model": cfg.training.clusters.start, "checkpoint_ids": parents, "path": wh.relative(str(start))}
    context.add_output_metadata({"start": cfg.training.clusters.start, "start_path": str(start),
                                 "clusters": dg.MetadataValue.md(markdown_table(pl.DataFrame(summary)))})
    return checkpoint_frame([
        {"stage": "cluster", "parents": parents, "datasets": {**datasets, "languages": r.pop("languages")}, **r,
         "metrics": {**r["metrics"], "start": started}}
        for r in records
    ], context.run_id)


def cluster_start_model(cfg, home, embedded_pool: pl.DataFrame, sft_model: pl.DataFrame) -> tuple[str, list[str]]:
    """(folder, parent checkpoint ids) of the model every cluster model starts from (training.clusters.start)."""
    if cfg.training.clusters.start == "sft_model":
        row = only(sft_model)
        return row["path"], [row["checkpoint_id"]]
    return model_folder(cfg.training.base_model, home, embedded_pool)


def merge_base(cluster_models: pl.DataFrame, wh) -> str | None:
    """The base of the task-vector merges: the cluster models' common start (metrics.start.path, stored
    relative to the home `wh`), the checkpoint their task vectors are measured from. None for cluster
    rows that do not record one (made before the start was recorded: they started from training.base_model)."""
    starts = {json.loads(m or "{}").get("start", {}).get("path") for m in cluster_models["metrics"].to_list()}
    starts = {wh.resolve(s) for s in starts}
    if len(starts) > 1:
        raise ValueError(f"the cluster models start from different models, so a task-vector merge has no one base: "
                         f"{sorted(map(str, starts))}")
    return next(iter(starts), None)


@dg.asset(io_manager_key="warehouse", metadata=CHECKPOINTS, group_name="training", kinds={"pytorch"})
def merged_model(
    context: dg.AssetExecutionContext, env: FactoryResource, servers: ModelServers, cluster_models: pl.DataFrame,
    embedded_pool: pl.DataFrame, prompts: pl.DataFrame,
):
    """The cluster models merged into one (weighted linear averaging by default, the method Aya
    kept; slerp, ties, dare_ties and dare_linear by config, with task vectors measured from the cluster
    models' common start), streamed tensor by tensor. With merge.candidates, each candidate merge is
    judged against every cluster model on that cluster's own languages' dev prompts (never eval) and
    the best pooled dev win rate is kept."""
    cfg = env.settings()
    wh = env.warehouse()
    m = cfg.merge
    names = cluster_models["name"].to_list()
    out = wh.dir("models") / "merged_model"
    needs_base = any(get_method(s.method).needs_base for s in [m, *m.to_try()])
    base = None
    if needs_base:  # task vectors are measured from the cluster models' common start (the base or sft_model)
        base = merge_base(cluster_models, wh) or model_folder(cfg.training.base_model, wh.home, embedded_pool)[0]
    models = dict(zip(names, cluster_models["path"].to_list(), strict=True))
    judge = configured_judge(cfg, wh.home, servers) if m.candidates else None
    choice = choose_merge(
        m, models, {n: own_languages(n) for n in names}, out, wh.dir("staging", "merge_candidates"),
        wh.dir("staging", "merge_dev"), prompts, judge, cfg.evaluation.sampling, context.run_id, base=base,
        batch_size=cfg.evaluation.batch_size, winrates=cfg.evaluation.winrates,
        model_ids=dict(zip(names, cluster_models["checkpoint_id"].to_list(), strict=True)),
    )
    info, kept = choice.info, choice.settings
    meta = {"method": kept.method, "inputs": dg.MetadataValue.json(names), "seconds": float(info.get("seconds", 0.0))}
    config = {**kept.recorded(), "models": names}
    metrics = {k: v for k, v in info.items() if k != "config"}
    # replaced on every run, empty without candidates: a run with them must not leave its rows to one without
    wh.quarantine("merged_model", None, choice.quarantine if choice.record is not None else schemas.rejected_frame(), context.run_id)
    if choice.record is not None:
        best = choice.record["candidates"][choice.record["kept"]]["dev"]
        meta |= {
            "kept_merge": choice.record["kept_label"],
            "dev_win_rate_vs_clusters": best["win_rate"] if best["win_rate"] is not None else float("nan"),
            "dev_candidates": dg.MetadataValue.md(markdown_table(candidates_table(choice.record))),
            "dev_choice": dg.MetadataValue.json(choice.record),
        }
        config["candidates"] = [c.model_dump(exclude_none=True) for c in m.candidates]
        metrics["merge_choice"] = choice.record
    context.add_output_metadata(meta)
    return checkpoint_frame([{
        "stage": "merged", "name": "merged_model", "path": out, "parents": cluster_models["checkpoint_id"].to_list(),
        "datasets": {}, "config": config, "metrics": metrics,
    }], context.run_id)


TRAINING_ASSETS = [sft_model, sft_model_single_teacher, dpo_offline_model, *ONLINE_ASSETS, cluster_models, merged_model]
