"""Evaluation and publishing: judgments against the single-teacher baseline and head to head,
win rates with confidence intervals, the step-by-step and head-to-head charts, and datasets in the
Hugging Face layout."""

import dagster as dg
import polars as pl

from assets.common import backend_for, image_markdown, only, serving
from assets.io_manager import SIDE_OUTPUT, metadata_table
from assets.resources import FactoryResource, ModelServers
from factory.charts import head_to_head_chart, language_chart, step_chart
from factory.evaluation import (
    BASELINE_STAGE,
    CLUSTER_PREFIX,
    CLUSTER_SPECIALISTS,
    EVALUATED,
    HEAD_TO_HEAD,
    STAGES,
    evaluate_models,
)
from factory.judges import build_judge
from factory.scoring.sequence_classifier import SequenceClassifierScorer
from factory.version import code_version
from factory.winrates import bradley_terry, validate_judgments
from factory.winrates import win_rates as compute
from warehouse.publish import pair_configs, publish_dataset
from warehouse.status import markdown_table

JUDGMENT_OUTS = {
    "judgments": dg.AssetOut(io_manager_key="warehouse", kinds={"pytorch"}, description=(
        "Every stage's model answers the eval split (never trained on) and is judged against the single-teacher "
        "SFT baseline; offline DPO also against arbitrage SFT, and the merged model against each cluster model on "
        "that cluster's own languages (column `opponent`). Default judge: chrF against the corpus's reference "
        "replies with a language-ID check, graded when both answers are off-language; never the Arbiter, which "
        "chose the training data.")),
    **{f"eval_answers_{name}": dg.AssetOut(io_manager_key="warehouse", metadata={SIDE_OUTPUT: True, "table": "generations"}, kinds={"pytorch"},
                                           description=f"{name}'s answers to the eval split (rows of `generations`).")
       for name in EVALUATED},
    "eval_answers_cluster_models": dg.AssetOut(
        io_manager_key="warehouse", metadata={SIDE_OUTPUT: True, "table": "generations"}, kinds={"pytorch"},
        description="Each cluster model's answers to the eval prompts of its own languages (rows of `generations`)."),
}


@dg.multi_asset(outs=JUDGMENT_OUTS, group_name="evaluation",
                ins={**{name: dg.AssetIn(name) for name in EVALUATED}, "cluster_models": dg.AssetIn()})
def judgments(context: dg.AssetExecutionContext, env: FactoryResource, servers: ModelServers, prompts: pl.DataFrame,
              cluster_models: pl.DataFrame, **models: pl.DataFrame):
    cfg = env.settings()
    wh = env.warehouse()
    ev = cfg.evaluation
    judge = configured_judge(cfg, wh.home, servers)
    checkpoints = {name: only(frame) for name, frame in models.items()}
    answers, df, quarantine = evaluate_models(
        judge, prompts, checkpoints, ev.sampling, wh.dir("staging", "eval_answers"), context.run_id, ev.batch_size,
        clusters=cluster_models.to_dicts(),
    )
    wh.quarantine("judgments", None, quarantine, context.run_id)
    for name in EVALUATED:
        yield dg.Output(answers[name], output_name=f"eval_answers_{name}")
    clusters = [a for n, a in answers.items() if n.startswith(CLUSTER_PREFIX)]
    yield dg.Output(pl.concat(clusters, how="diagonal_relaxed") if clusters else answers[EVALUATED[0]].clear(),
                    output_name="eval_answers_cluster_models")
    verdict = pl.col("verdict")
    tally = df.group_by("stage", "opponent").agg(
        wins=(verdict == "win").sum(), ties=(verdict == "tie").sum(), losses=(verdict == "loss").sum())
    yield dg.Output(df, output_name="judgments", metadata={
        "judge": judge.name, "tally": dg.MetadataValue.md(markdown_table(tally.sort("stage", "opponent"))),
        "tie_share": float((df["verdict"] == "tie").mean()) if df.height else 0.0,
    })


def configured_judge(cfg, home, servers):
    """evaluation.judge built with what it needs: an independent reward model, or an LLM backend."""
    ev = cfg.evaluation
    scorer = backend = None
    if ev.judge.name == "reward":
        scorer = SequenceClassifierScorer(ev.reward_model)
    if ev.judge.name == "llm":
        backend = backend_for(ev.judge_model, None, home, serving(cfg, home, servers))[1]
    return build_judge(ev.judge, scorer=scorer, backend=backend)


@dg.asset(io_manager_key="warehouse", group_name="evaluation", kinds={"polars"})
def win_rates(context: dg.AssetExecutionContext, env: FactoryResource, judgments: pl.DataFrame) -> pl.DataFrame:
    """Win rate (ties count half) per language and overall (macro average) against the baseline,
    with 95% CIs (per-prompt variance pooled within languages), and the step-by-step chart (also under FACTORY_HOME/reports/)."""
    cfg = env.settings()
    wh = env.warehouse()
    valid, quarantine = validate_judgments(judgments)
    wh.quarantine("win_rates", None, quarantine, context.run_id)
    clusters = sorted(o for o in valid["opponent"].unique().to_list() if o and o.startswith(CLUSTER_PREFIX))
    rates = compute(valid, cfg.evaluation.winrates, run_id=context.run_id,
                    pooled={CLUSTER_SPECIALISTS: clusters} if clusters else None)
    order = [s for s, _ in STAGES]
    reports = wh.dir("reports")
    label = "single-teacher SFT"
    # charts name the baseline, not its id
    named = rates.filter(pl.col("opponent") == BASELINE_STAGE).with_columns(pl.lit(label).alias("baseline"))
    step_png = step_chart(named, order, label, reports / "step_by_step.png")
    lang_png = language_chart(named, order, reports / "win_rates_by_language.png", baseline_name=label)
    step = step_table(rates)
    (reports / "step_by_step.md").write_text(markdown_table(step) + "\n")
    heads = head_to_head_table(rates)
    h2h_png = head_to_head_chart(head_to_head_rows(rates), reports / "head_to_head.png")
    (reports / "head_to_head.md").write_text(markdown_table(heads) + "\n")
    # Bradley-Terry over the stages and the baseline (all compared with the same baseline), stage names for ids.
    vs_baseline = valid.filter(pl.col("opponent") == BASELINE_STAGE)
    names = dict(zip(vs_baseline["model"], vs_baseline["stage"], strict=False)) | {b: "baseline" for b in vs_baseline["baseline"].unique()}
    bt = bradley_terry(vs_baseline).with_columns(pl.col("model").replace_strict(names, default=pl.col("model")).alias("model"))
    context.add_output_metadata({
        "step_by_step": dg.MetadataValue.md(markdown_table(step)),
        "win_rates_by_language": metadata_table(language_table(rates)),
        "chart": dg.MetadataValue.md(image_markdown(step_png, "win rate vs single-teacher SFT")),
        "head_to_head": dg.MetadataValue.md(markdown_table(heads)),
        "head_to_head_chart": dg.MetadataValue.md(image_markdown(h2h_png, "head-to-head win rates")),
        "per_language_chart": dg.MetadataValue.md(image_markdown(lang_png, "per-language win rates")),
        "bradley_terry": dg.MetadataValue.md(markdown_table(bt.sort("rating", descending=True))),
        "reports": reports.relative_to(wh.home).as_posix(),  # under FACTORY_HOME, which may move
    })
    return rates


def step_table(rates: pl.DataFrame) -> pl.DataFrame:
    """The headline: overall (macro) win rate against the baseline after each stage."""
    order = {s: i for i, (s, _) in enumerate(STAGES)}
    return (
        rates.filter((pl.col("language") == "all") & (pl.col("opponent") == BASELINE_STAGE))
        .select("stage", "wins", "ties", "losses", *(pl.col(c).round(3) for c in ("win_rate", "ci_low", "ci_high", "mdd")))
        .sort(pl.col("stage").replace_strict(order, default=99))
    )


def head_to_head_rows(rates: pl.DataFrame) -> pl.DataFrame:
    """The overall (macro) rows of every head-to-head comparison, in reading order: HEAD_TO_HEAD pairs,
    then the merged model against the pooled cluster specialists, then against each cluster model."""
    first = [o for _, o in HEAD_TO_HEAD] + [CLUSTER_SPECIALISTS]
    rank = pl.col("opponent").replace_strict({o: i for i, o in enumerate(first)}, default=len(first))
    return rates.filter((pl.col("language") == "all") & (pl.col("opponent") != BASELINE_STAGE)).sort(rank, "opponent")


def head_to_head_table(rates: pl.DataFrame) -> pl.DataFrame:
    """Overall (macro) win rate of each head-to-head comparison (head_to_head_rows), for the UI and the demo."""
    return (
        head_to_head_rows(rates)
        .select("stage", "opponent", "n", "wins", "ties", "losses",
                *(pl.col(c).round(3) for c in ("win_rate", "ci_low", "ci_high", "mdd")))
    )


def language_table(rates: pl.DataFrame) -> pl.DataFrame:
    """Per language and stage: n, win rate and its CI (one row each, for the UI's table view)."""
    order = {s: i for i, (s, _) in enumerate(STAGES)}
    return (
        rates.filter(pl.col("language") != "all")
        .select("language", "stage", "opponent", "n", "wins", "ties", "losses",
                *(pl.col(c).round(3) for c in ("win_rate", "ci_low", "ci_high", "mdd")))
        .sort("language", pl.col("stage").replace_strict(order, default=99), "opponent")
    )


ONLINE_PAIRS = [f"online_pairs_round_{k}" for k in (1, 2, 3)]


@dg.asset(
    io_manager_key="warehouse", group_name="evaluation", kinds={"huggingface"},
    ins={"preference_pairs": dg.AssetIn(), **{name: dg.AssetIn() for name in ONLINE_PAIRS}},
)
def published_datasets(
    context: dg.AssetExecutionContext, env: FactoryResource, sft_data: pl.DataFrame, **pair_tables: pl.DataFrame,
) -> pl.DataFrame:
    """The SFT data and every preference pair (offline per language, each online round as its own
    config) as Hugging Face dataset folders: Parquet shards per config, an `all` config that is the
    default, a README card with YAML configs, licenses and provenance; loadable with
    datasets.load_dataset(folder) or (folder, name=CONFIG) and trainable by TRL as they are."""
    cfg = env.settings()
    wh = env.warehouse()
    pub = cfg.publish
    out_root = wh.dir("published")
    pairs = pl.concat([pair_tables["preference_pairs"], *(pair_tables[n] for n in ONLINE_PAIRS)], how="diagonal_relaxed")
    provenance = {
        "run_ids": sorted(set(pairs["run_id"].unique().to_list()) | set(sft_data["run_id"].unique().to_list())),
        "teachers": [t.name for t in cfg.resolved_teachers()],
        "reward_model": cfg.arbiter.model,
        "strategy": cfg.arbitrage.sft_strategy,
        "code_version": code_version(),
        "config": cfg.name,
    }
    rows = []
    for name, df, desc, configs in [
        ("preference_pairs", pairs, pub.description, pair_configs(pub.config_column)),
        ("sft_data", sft_data.filter(pl.col("strategy") == cfg.arbitrage.sft_strategy),
         f"Multilingual SFT data selected by {cfg.arbitrage.sft_strategy} from a teacher pool.", pub.config_column),
    ]:
        folder = publish_dataset(df, out_root / name, name=f"{pub.name}-{name}" if name == "sft_data" else pub.name,
                                 config_column=configs, description=desc, licenses=pub.licenses,
                                 source_info=provenance, split=pub.split, max_rows_per_shard=pub.max_rows_per_shard,
                                 task_categories=pub.task_categories)
        n_configs = df.select(configs if isinstance(configs, pl.Expr) else pl.col(configs) if configs else pl.lit("all")).n_unique()
        rows.append({"dataset": name, "path": str(folder.relative_to(wh.home)), "rows": df.height, "configs": n_configs})
    table = pl.DataFrame(rows)
    context.add_output_metadata({"published": dg.MetadataValue.md(markdown_table(table))})
    return table
