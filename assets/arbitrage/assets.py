"""Data arbitrage: teacher generations, Arbiter scores, routed selections, SFT data, pairs."""

import json

import dagster as dg
import polars as pl

from assets.common import (
    all_eval_prompts,
    arbiter_scorer,
    backend_for,
    checkpoint_frame,
    configured_scorers,
    contamination_check,
    image_markdown,
    only,
    primary_scorer,
    serving,
    teacher_backends,
)
from assets.io_manager import SIDE_OUTPUT
from assets.partitions import language_partitions
from assets.ray_jobs import ray_generations, ray_scores
from assets.resources import FactoryResource, ModelServers
from factory.charts import routing_chart
from factory.decontam import decontamination_gate
from factory.generation.registry import TeacherConfig
from factory.generation.runner import generate_completions
from factory.learned_router import Router, evaluate_router, train_router
from factory.pairs import best_worst_pairs, check_pairs, native_vs_translated, pair_counts, weakest_teacher
from factory.routing import best_mean_teacher, reward_routing, scored_frame, select_with_candidates, strategy_comparison
from factory.routing import routing_stats as stats
from factory.scoring.score import score_generations, teacher_table
from factory.sft_data import sft_rows
from warehouse import schemas
from warehouse.status import markdown_table


@dg.asset(partitions_def=language_partitions, io_manager_key="warehouse", group_name="arbitrage", kinds={"pytorch"})
def generations(
    context: dg.AssetExecutionContext, env: FactoryResource, servers: ModelServers, prompts: pl.DataFrame,
    embedded_pool: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """Every teacher's k completions for each training prompt of the language (the eval split is
    never generated here). Written in shards as it goes: a killed run resumes where it stopped.
    A teacher that keeps failing on a prompt is quarantined; the others' answers are kept."""

    cfg = env.settings()
    wh = env.warehouse()
    lang = context.partition_key
    train = prompts.filter(pl.col("split") == "train")
    shard_dir = wh.dir("staging", "generations", f"language={lang}")
    teachers = (ray_generations(context, env, servers, train, embedded_pool, shard_dir) if cfg.generation.engine == "ray"
                else teacher_backends(cfg, embedded_pool, wh.home, servers))  # fmt: skip
    gens, quarantine = generate_completions(
        train, teachers, cfg.generation.k, shard_dir, context.run_id, cfg.generation.retries
    )
    wh.quarantine("generations", lang, quarantine, context.run_id)
    per_teacher = gens.group_by("teacher").agg(
        n=pl.len(), tokens=pl.col("n_tokens").sum(), seconds=pl.col("seconds").sum(),
        empty=(pl.col("text").str.strip_chars() == "").sum(),
    ).with_columns(tokens_per_s=pl.col("tokens") / pl.col("seconds")).sort("teacher")
    context.add_output_metadata({
        "teachers": dg.MetadataValue.md(markdown_table(per_teacher)),
        "tokens_generated": int(gens["n_tokens"].sum() or 0),
        "generated_this_run": gens.filter(pl.col("run_id") == context.run_id).height,
        "quarantined": quarantine.height,
    })
    return dg.Output(gens)  # an Output, not the frame: a Pipes session (engine: ray) asks for typed results


SCORE_CHECKS = [
    dg.AssetCheckSpec("one_score_per_completion", asset="scores", description="Exactly one score per completion per scorer."),
    dg.AssetCheckSpec("rewards_finite", asset="scores", description="Every reward and reward_z is finite."),
]


@dg.asset(
    partitions_def=language_partitions, io_manager_key="warehouse", group_name="arbitrage", kinds={"pytorch"},
    check_specs=SCORE_CHECKS,
)
def scores(
    context: dg.AssetExecutionContext, env: FactoryResource, servers: ModelServers, generations: pl.DataFrame, prompts: pl.DataFrame,
    arbiter: pl.DataFrame,
):
    """The Arbiter's reward for every completion, standardised per language (reward_z), with the
    detected language and language_match (wrong-language answers are never selectable). Rewards are
    cached by (completion, text, Arbiter checkpoint hash): a rerun scores only what changed."""

    cfg = env.settings()
    wh = env.warehouse()
    scorers = configured_scorers(cfg, arbiter, wh.home, servers)
    cache = wh.dir("staging", "scores", f"language={context.partition_key}")
    if cfg.scoring.engine == "ray":
        ray_scores(context, env, generations, prompts, scorers, cache)
    scored, quarantine = score_generations(generations, prompts, scorers, cfg.scoring.fidelity, context.run_id, cache)
    wh.quarantine("scores", context.partition_key, quarantine, context.run_id)
    table = teacher_table(scored)
    total_s = float(generations["seconds"].sum() or 0)
    yield dg.Output(scored, metadata={
        "teacher_table": dg.MetadataValue.md(markdown_table(table)),
        "tokens_generated": int(generations["n_tokens"].sum() or 0),
        "tokens_per_second": float(generations["n_tokens"].sum() or 0) / total_s if total_s else 0.0,
        "quarantined": quarantine.height,
    })
    per = scored.group_by("completion_id", "scorer").len()
    # Per scorer, every completion is scored or quarantined (row_key "<completion_id>|<scorer>").
    expected = {(cid, s.name) for cid in generations["completion_id"].to_list() for s in scorers}
    covered = set(zip(scored["completion_id"], scored["scorer"], strict=True))
    covered |= {tuple(k.rsplit("|", 1)) for k in quarantine["row_key"].to_list()}
    missing = len(expected - covered)
    yield dg.AssetCheckResult(
        check_name="one_score_per_completion", passed=bool(per["len"].max() in (None, 1)) and missing == 0,
        metadata={"duplicates": int((per["len"] > 1).sum()), "unscored_not_quarantined": missing},
    )
    finite = scored.select(pl.col("reward").is_finite().all() & pl.col("reward_z").is_finite().all()).item()
    yield dg.AssetCheckResult(check_name="rewards_finite", passed=bool(finite) if scored.height else True)


ROUTING_COLUMNS = ["prompt_id", "language", "completion_id", "teacher", "sample_index", "reward", "language_match"]


@dg.asset(io_manager_key="warehouse", metadata={"table": "checkpoints"}, group_name="arbitrage", kinds={"numpy"})
def router(
    context: dg.AssetExecutionContext, env: FactoryResource, scores: pl.DataFrame, generations: pl.DataFrame,
    prompts: pl.DataFrame,
) -> pl.DataFrame:
    """What routing needs from all languages at once: the single best teacher (macro-mean reward,
    the baseline) and the learned router, trained on reward routing's winners of part of the
    training prompts to predict the winning teacher from the prompt alone. Its report (measured on
    prompts it was not trained on) is in the metadata: share of reward routing's reward it
    recovers and generations it would save."""

    cfg = env.settings()
    arb = cfg.arbitrage
    scored = scored_frame(scores, generations, primary_scorer(cfg)).select(ROUTING_COLUMNS)
    single = arb.routing.single_teacher or best_mean_teacher(scored)
    path, report = "", {}
    if "learned_routing" in arb.strategies:
        texts = dict(zip(prompts["prompt_id"], prompts["text"], strict=True))
        winners, _ = reward_routing(scored.lazy(), arb.routing)
        model = train_router(texts, winners.collect(), arb.router)
        report = evaluate_router(model, texts, scored, arb.router, arb.routing)
        path = str(model.save(env.warehouse().dir("models") / "router.npz"))
    context.add_output_metadata({"single_teacher": single, "learned_router": dg.MetadataValue.json(report)})
    return checkpoint_frame([{
        "stage": "router", "name": "router", "path": path, "datasets": {"scores": env.warehouse().version("scores")},
        "config": {"single_teacher": single, "router": arb.router.model_dump()}, "metrics": report,
    }], context.run_id)


SELECTION_OUTS = {
    "selections": dg.AssetOut(io_manager_key="warehouse", kinds={"polars"}, description=(
        "One selected completion per training prompt of the language for every routing strategy: reward_routing (the "
        "Arbiter's argmax), fixed_routing, random_routing, single_teacher (the baseline) and learned_routing (the "
        "router's pick from the prompt alone).")),
    "pair_candidates": dg.AssetOut(
        io_manager_key="warehouse", metadata={SIDE_OUTPUT: True}, kinds={"polars"},
        description=("Per prompt the best and worst eligible completion (ids, teachers, rewards, texts), from the same pass "
                     "over the scored table as the selections: what preference_pairs makes its best_worst pairs of.")),
}


@dg.multi_asset(outs=SELECTION_OUTS, partitions_def=language_partitions, group_name="arbitrage")
def selections(
    context: dg.AssetExecutionContext, env: FactoryResource, scores: pl.DataFrame, generations: pl.DataFrame,
    prompts: pl.DataFrame, router: pl.DataFrame,
):
    cfg = env.settings()
    arb = cfg.arbitrage
    row = only(router)
    routing = arb.routing.model_copy(update={"single_teacher": json.loads(row["config"])["single_teacher"]})
    model = Router.load(row["path"]) if row["path"] else None
    # One pass over the scored table for the selections and the best_worst candidates, rows sorted by
    # prompt_id: the scored frame's row order is not the same from run to run (a join), and the DPO
    # trainers' seeded shuffles start from the pairs' order, so "table" order moved DPO results between
    # identical demos (docs/bench/selection.md).
    sel, quarantine, candidates = select_with_candidates(
        scored_frame(scores, generations, primary_scorer(cfg)), arb.strategies, routing, context.run_id, router=model, prompts=prompts,
        pairs_require_language_match=cfg.pairs.best_worst.require_language_match,
    )
    env.warehouse().quarantine("selections", context.partition_key, quarantine, context.run_id)
    summary = strategy_comparison(sel)  # mean reward on the prompts every strategy selected
    yield dg.Output(sel, output_name="selections", metadata={"strategies": dg.MetadataValue.md(markdown_table(summary)),
                                                             "quarantined": quarantine.height})
    yield dg.Output(candidates.with_columns(pl.lit(context.run_id).alias("run_id")), output_name="pair_candidates")


@dg.asset(io_manager_key="warehouse", group_name="arbitrage", kinds={"polars"})
def routing_stats(context: dg.AssetExecutionContext, env: FactoryResource, selections: pl.DataFrame) -> pl.DataFrame:
    """Per language, how often each teacher wins under reward routing (with a chart), and the
    strategies compared on the prompts every strategy selected (metadata)."""

    df = stats(selections)
    wh = env.warehouse()
    png = wh.dir("reports") / "routing.png"
    routing_chart(df, png)
    context.add_output_metadata({
        "chart": dg.MetadataValue.md(image_markdown(png, "reward-routing wins")),
        "chart_path": str(png.relative_to(wh.home)),
        "strategies_on_shared_prompts": dg.MetadataValue.md(markdown_table(strategy_comparison(selections))),
    })
    return df


@dg.asset(
    io_manager_key="warehouse", group_name="arbitrage", kinds={"polars"},
    check_specs=[dg.AssetCheckSpec("decontaminated", asset="sft_data", blocking=True,
                                   description="No eval prompt (exact or normalised/n-gram match) is in the SFT data.")],
)
def sft_data(
    context: dg.AssetExecutionContext, env: FactoryResource, selections: pl.DataFrame, prompts: pl.DataFrame,
    generations: pl.DataFrame,
):
    """SFT targets in TRL's conversational prompt-completion format, for the configured strategy
    (reward_routing by default) and for the single-teacher baseline, decontaminated against the held-out (eval and dev) prompts."""
    cfg = env.settings()
    wh = env.warehouse()
    strategies = list(dict.fromkeys([cfg.arbitrage.sft_strategy, cfg.arbitrage.baseline_strategy]))
    rows, quarantined = sft_rows(selections, prompts, generations, strategies)
    evals = all_eval_prompts(wh, prompts)
    kept, hits = decontamination_gate(rows, prompts, evals, cfg.arbitrage.decontam, cfg.arbitrage.decontaminate)
    wh.quarantine("sft_data", None, pl.concat([quarantined, hits]), context.run_id)
    kept = kept.with_columns(pl.lit(context.run_id).alias("run_id"))
    yield dg.Output(kept, metadata={"contaminated_removed": hits.height, "per_strategy": dg.MetadataValue.md(
        markdown_table(kept.group_by("strategy").len().sort("strategy")))})
    yield contamination_check("decontaminated", kept, prompts, evals, cfg)


PAIR_CHECKS = [
    dg.AssetCheckSpec("pairs_valid", asset="preference_pairs",
                      description="best_worst chosen reward > rejected reward; no identical chosen and rejected."),
    dg.AssetCheckSpec("decontaminated", asset="preference_pairs", blocking=True,
                      description="No eval prompt is in the preference pairs."),
    dg.AssetCheckSpec("enough_pairs", asset="preference_pairs",
                      description="At least pairs.min_pairs_per_language pairs (a warning otherwise)."),
]
PAIR_OUTS = {
    "preference_pairs": dg.AssetOut(io_manager_key="warehouse", kinds={"polars"}, description=(
        "Offline chosen/rejected pairs in TRL's conversational preference format: best_worst (highest vs lowest "
        "reward, above a margin) and native_vs_translated (best in-language answer vs a weaker teacher's English "
        "answer translated into the language).")),
    "native_vs_translated": dg.AssetOut(
        io_manager_key="warehouse", metadata={SIDE_OUTPUT: True, "table": "generations"}, is_required=False, kinds={"polars"},
        description="The translated rejected answers of native_vs_translated pairs (rows of `generations`)."),
}


@dg.multi_asset(
    outs=PAIR_OUTS, partitions_def=language_partitions, group_name="arbitrage", check_specs=PAIR_CHECKS,
)
def preference_pairs(
    context: dg.AssetExecutionContext, env: FactoryResource, servers: ModelServers, scores: pl.DataFrame, generations: pl.DataFrame,
    prompts: pl.DataFrame, selections: pl.DataFrame, pair_candidates: pl.DataFrame, embedded_pool: pl.DataFrame, arbiter: pl.DataFrame,
):
    cfg = env.settings()
    wh = env.warehouse()
    lang = context.partition_key
    # best_worst from the candidates the selections step found in its pass (no second pass over scored)
    pairs, stats = best_worst_pairs(pair_candidates, prompts, cfg.pairs.best_worst.min_margin, run_id=context.run_id)
    nvt = cfg.pairs.native_vs_translated
    translated, quarantined = None, []
    scored = scored_frame(scores, generations, primary_scorer(cfg)) if nvt.enabled and lang not in nvt.skip_languages else None
    if scored is not None and scored.height:
        best = selections.filter(pl.col("strategy") == "reward_routing")
        nvt_pairs, translated, q = native_vs_translated_pairs(cfg, scored, best, prompts, embedded_pool, arbiter, context.run_id, wh.home, servers)
        pairs, quarantined = pl.concat([pairs, nvt_pairs], how="diagonal_relaxed"), [q]
    evals = all_eval_prompts(wh, prompts)  # every language's: the same text can carry another label
    kept, hits = decontamination_gate(pairs, prompts, evals, cfg.arbitrage.decontam, cfg.arbitrage.decontaminate)
    wh.quarantine("preference_pairs", lang, pl.concat([*quarantined, hits], how="diagonal_relaxed"), context.run_id)
    counts, warnings = pair_counts(kept, cfg.pairs.min_pairs_per_language, [lang])
    yield dg.Output(kept, output_name="preference_pairs", metadata={
        "best_worst_stats": dg.MetadataValue.json(stats), "per_method": dg.MetadataValue.md(markdown_table(counts)),
        "contaminated_removed": hits.height,
    })
    # always, empty when none: a run without translations replaces an earlier run's rows of this language
    yield dg.Output(translated if translated is not None else schemas.empty(schemas.GENERATIONS), output_name="native_vs_translated")
    yield from pair_checks(kept, prompts, evals, cfg, warnings)


def pair_checks(kept: pl.DataFrame, prompts: pl.DataFrame, evals: pl.DataFrame, cfg, warnings: list[str]):
    problems = check_pairs(kept)
    yield dg.AssetCheckResult(check_name="pairs_valid", passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})
    yield contamination_check("decontaminated", kept, prompts, evals, cfg)
    yield dg.AssetCheckResult(
        check_name="enough_pairs", passed=not warnings, severity=dg.AssetCheckSeverity.WARN,
        metadata={"warnings": dg.MetadataValue.json(warnings), "pairs": kept.height},
    )


def native_vs_translated_pairs(cfg, scored: pl.DataFrame, best: pl.DataFrame, prompts: pl.DataFrame, pool: pl.DataFrame,
                               arbiter: pl.DataFrame, run_id: str, home, servers: ModelServers | None = None):
    """Chosen: the best in-language completion (reward routing's selection). Rejected: the weak
    teacher's English answer to the prompt's English translation, translated back by the translator."""
    nvt = cfg.pairs.native_vs_translated
    teachers = {t.name: b for t, b in teacher_backends(cfg, pool, home, servers)}
    weak = weakest_teacher(scored, list(teachers), nvt.weak_teacher)
    translator_cfg = nvt.translator_model or TeacherConfig(name="translator", model="embedded:base")
    translator = backend_for(translator_cfg, pool, home, serving(cfg, home, servers))[1]
    best = best.join(scored.select("completion_id", "text"), on="completion_id", how="left")
    scorer, _ = arbiter_scorer(cfg, arbiter)
    return native_vs_translated(best, prompts, teachers[weak], translator, nvt, run_id=run_id, scorer=scorer)
