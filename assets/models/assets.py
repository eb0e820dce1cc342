"""The embedded model pool (tokenizer, base, one teacher per cluster) and the Arbiter."""

from pathlib import Path

import dagster as dg
import polars as pl

from assets.common import checkpoint_frame, model_folder, source_record
from assets.config import model_source_refs
from assets.resources import FactoryResource
from factory.sources.chatterbot import Dialog
from training.reward_model import kinds_at_chance, make_reward_pairs, measure_reward_model, train_reward_model
from training.teachers import build_embedded_pool
from warehouse.status import markdown_table


def train_dialogs(prompts: pl.DataFrame) -> list[Dialog]:
    """Training-split prompts with their reference replies (eval prompts are never trained on)."""
    train = prompts.filter(pl.col("split") == "train")
    return [
        Dialog(r["language"], r["text"], list(r["references"] or []), r["source"])
        for r in train.iter_rows(named=True)
    ]


@dg.asset(io_manager_key="warehouse", metadata={"table": "checkpoints"}, group_name="models", kinds={"pytorch"})
def model_sources(context: dg.AssetExecutionContext, env: FactoryResource) -> pl.DataFrame:
    """Every model the config names as a file (gguf:PATH) or as a file shipped in an installed
    package (pkg:DIST/PATH), converted once into a Hugging Face folder under models/sources/ and
    recorded with its source file and sha256 (so a checkpoint's lineage reaches the file)."""
    cfg = env.settings()
    home = env.warehouse().home
    records = [source_record(ref, home) for ref in model_source_refs(cfg)]
    context.add_output_metadata({"sources": dg.MetadataValue.json(
        {r["name"]: {"sha256": r["config"].get("sha256"), "folder": str(Path(r["path"]).relative_to(home))}
         for r in records})})
    return checkpoint_frame(records, context.run_id)


@dg.asset(io_manager_key="warehouse", metadata={"table": "checkpoints"}, group_name="models", kinds={"pytorch"},
          deps=[model_sources])
def embedded_pool(context: dg.AssetExecutionContext, env: FactoryResource, prompts: pl.DataFrame) -> pl.DataFrame:
    """The embedded default's tiny models, built locally from the training prompts: a byte-level
    BPE tokenizer, a weak generalist base model, and one specialised teacher per language
    cluster (its languages plus en/es/fr). Cached: a rerun with the same inputs reuses them."""
    cfg = env.settings()
    wh = env.warehouse()
    info = build_embedded_pool(train_dialogs(prompts), wh.dir("models", "embedded"), cfg.models.embedded, cfg.languages)
    datasets = {"prompts": wh.version("prompts")}
    base = {"stage": "base", "name": "base", "path": info["base"]["path"], "config": info["base"].get("config", {}),
            "metrics": info["base"].get("metrics", {}), "datasets": datasets}
    base_id = checkpoint_frame([base], context.run_id)["checkpoint_id"][0]
    records = [base] + [
        {"stage": "teacher", "name": cluster, "path": t["path"], "parents": [base_id], "datasets": datasets,
         "config": {**t.get("config", {}), "languages": t.get("languages")}, "metrics": t.get("metrics", {})}
        for cluster, t in info["teachers"].items()
    ]
    table = pl.DataFrame([
        {"model": r["name"], "final_loss": r["metrics"].get("final_loss"), "seconds": r["metrics"].get("seconds"),
         "reused": (info["base"] if r["name"] == "base" else info["teachers"][r["name"]]).get("reused")}
        for r in records
    ])
    context.add_output_metadata({"models": dg.MetadataValue.md(markdown_table(table))})
    return checkpoint_frame(records, context.run_id)


ARBITER_CHECK = dg.AssetCheckSpec(
    "arbiter_beats_chance", asset="arbiter", blocking=True,
    description="The Arbiter's held-out accuracy is above chance on every pair kind (a warning, or with "
                "arbiter.stop_at_chance an error that stops everything downstream).",
)


@dg.asset(io_manager_key="warehouse", metadata={"table": "checkpoints"}, group_name="models", kinds={"pytorch"},
          check_specs=[ARBITER_CHECK])
def arbiter(
    context: dg.AssetExecutionContext, env: FactoryResource, prompts: pl.DataFrame, embedded_pool: pl.DataFrame
):
    """The Arbiter: the reward model that scores every teacher's completion. The embedded one is
    trained with TRL's RewardTrainer on corpus pairs (in-language reference reply preferred over a
    reply in another language, a reply to another prompt, or a degenerate one); with
    `arbiter.relevance: pmi` its reward adds the base LM's prompt-reply PMI, weighted as fitted on
    the train pairs. Its accuracy on held-out pairs (per kind, and per feature alone) is reported here."""
    cfg = env.settings()
    wh = env.warehouse()
    arb = cfg.arbiter
    pairs = make_reward_pairs(train_dialogs(prompts), seed=cfg.seed, heldout_fraction=arb.train.heldout_fraction)
    datasets = {"prompts": wh.version("prompts")}
    if arb.model != "embedded":
        metrics = measure_reward_model(arb.model, pairs, arb.train, arb.max_length, cfg.seed)
        record = {"stage": "reward_model", "name": "arbiter", "path": arb.model, "config": {"external": True},
                  "datasets": datasets, "metrics": metrics}
        yield dg.Output(checkpoint_frame([record], context.run_id), metadata={"heldout_accuracy": dg.MetadataValue.json(metrics)})
        yield chance_check(metrics, arb.stop_at_chance)
        return
    base_path, parents = model_folder(arb.base_model, wh.home, embedded_pool)
    out = wh.dir("models") / "arbiter"
    metrics = train_reward_model(base_path, pairs, out, arb.train, relevance=arb.relevance, relevance_max_length=arb.max_length)
    frame = checkpoint_frame([{
        "stage": "reward_model", "name": "arbiter", "path": out, "parents": parents, "datasets": datasets,
        "config": {**arb.train.model_dump(), "relevance": arb.relevance}, "metrics": metrics,
    }], context.run_id)
    yield dg.Output(frame, metadata={
        "heldout_accuracy": float(metrics.get("accuracy", float("nan"))),
        "accuracy_by_kind": dg.MetadataValue.json(metrics.get("accuracy_by_kind", {})),
        # each feature alone (classifier, pmi) on the same held-out pairs, and the fitted weights
        "components": dg.MetadataValue.json(metrics.get("components", {})),
        "relevance": dg.MetadataValue.json((metrics.get("relevance") or {}).get("weights", {})),
        "n_train_pairs": int(metrics.get("n_train", 0)),
    })
    yield chance_check(metrics, arb.stop_at_chance)


def chance_check(metrics: dict, stop: bool) -> dg.AssetCheckResult:
    at_chance = kinds_at_chance(metrics)
    return dg.AssetCheckResult(
        check_name="arbiter_beats_chance", passed=not at_chance,
        severity=dg.AssetCheckSeverity.ERROR if stop else dg.AssetCheckSeverity.WARN,
        metadata={"at_chance": dg.MetadataValue.json(at_chance), "accuracy_by_kind": dg.MetadataValue.json(metrics.get("accuracy_by_kind", {}))},
    )
