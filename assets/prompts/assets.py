"""The `prompts` asset: validated multilingual prompts with held-out dev and eval splits."""


import dagster as dg
import polars as pl

from assets.partitions import language_partitions
from assets.resources import FactoryResource
from factory.prompts import UNROUTED, load_prompts

PROMPT_CHECKS = [
    dg.AssetCheckSpec("not_empty", asset="prompts", description="The language partition has at least one prompt."),
    dg.AssetCheckSpec("unique_prompt_id", asset="prompts", description="No prompt_id appears twice."),
    dg.AssetCheckSpec("splits_disjoint", asset="prompts", description="No prompt is in two splits (train, dev, eval)."),
]


@dg.asset(
    partitions_def=language_partitions,
    io_manager_key="warehouse",
    group_name="data",
    kinds={"polars", "parquet"},
    check_specs=PROMPT_CHECKS,
)
def prompts(context: dg.AssetExecutionContext, env: FactoryResource):
    """Prompts per language from the configured sources (embedded default: chatterbot-corpus),
    validated, deduplicated, with a held-out `eval` split (~10%, by prompt_id) never used for
    training or tuning, and a `dev` split (~5-10%) the online rounds decide on. Rejected rows go to `quarantine` with a reason and a code, duplicates included,
    so read = kept + quarantined for the partition. Rows no partition takes (unknown or
    out-of-run language, unreadable) are quarantined once, by the run's first language,
    under partition `unrouted`."""
    cfg = env.settings()
    lang = context.partition_key
    batch = load_prompts(cfg.prompts, lang, context.run_id, cfg.languages)
    wh = env.warehouse()
    wh.quarantine("prompts", lang, batch.quarantine, context.run_id)
    if batch.owns_unrouted:  # written even when empty, so a fixed source clears old rows
        wh.quarantine("prompts", UNROUTED, batch.unrouted, context.run_id)
    df = batch.prompts
    rejected = pl.concat([batch.quarantine, batch.unrouted])
    reasons = rejected.group_by("reason").len().sort("len", descending=True).head(10)
    codes = rejected.group_by("code").len().sort("len", descending=True)
    yield dg.Output(
        df,
        metadata={
            **{f"count/{k}": v for k, v in batch.counts.items()},
            "quarantine_codes": dg.MetadataValue.json(dict(codes.iter_rows())),
            "quarantine_reasons": dg.MetadataValue.json(dict(reasons.iter_rows())),
        },
    )
    yield dg.AssetCheckResult(check_name="not_empty", passed=df.height > 0, metadata={"rows": df.height})
    dupes = df.height - df["prompt_id"].n_unique()
    yield dg.AssetCheckResult(check_name="unique_prompt_id", passed=dupes == 0, metadata={"duplicates": dupes})
    both = df.group_by("prompt_id").agg(pl.col("split").n_unique().alias("n")).filter(pl.col("n") > 1).height
    yield dg.AssetCheckResult(check_name="splits_disjoint", passed=both == 0, metadata={"in_both": both})
