"""SFT rows from one strategy's selections, in TRL's conversational prompt-completion format.

Reads: selections [prompt_id, language, strategy, completion_id, teacher, reward]
    (one strategy), prompts [prompt_id, text], and the chosen completions' text:
    a `text` column in selections, or generations [completion_id, text].
Writes: prompt list[{role, content}] (the user turn), completion list[{role, content}]
    (the assistant turn), prompt_id, language, strategy, completion_id, teacher, reward.
`trl.SFTTrainer` takes a `datasets.Dataset` of these rows as is (`Dataset.from_polars`).
"""

from __future__ import annotations

import polars as pl

from warehouse.schemas import SFT_DATA

# The rows to_sft_rows makes: the sft_data table's columns; the asset adds run_id.
SFT_ROWS = {c: t for c, t in SFT_DATA.items() if c != "run_id"}


def message(role: str, content: pl.Expr) -> pl.Expr:
    """A one-message conversation [{role, content}] as a polars list-of-struct expression."""
    return pl.concat_list(pl.struct(pl.lit(role).alias("role"), content.alias("content")))


def to_sft_rows(
    selections: pl.DataFrame, prompts: pl.DataFrame, generations: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Returns (rows per SFT_ROWS, quarantine [row_key, reason, payload]) for one strategy;
    a selection whose prompt or completion text is missing or empty is quarantined."""
    strategies = selections["strategy"].unique().to_list()
    if len(strategies) > 1:
        raise ValueError(f"to_sft_rows takes one strategy's selections, got {sorted(strategies)}")
    sel = selections
    if "text" not in sel.columns:
        if generations is None:
            raise ValueError("the completion text is needed: a text column in selections or the generations table")
        sel = sel.join(generations.select("completion_id", "text").unique("completion_id"), on="completion_id", how="left")
    joined = sel.join(prompts.select("prompt_id", pl.col("text").alias("prompt_text")), on="prompt_id", how="left")
    reason = (
        pl.when(pl.col("prompt_text").is_null() | (pl.col("prompt_text").str.strip_chars() == ""))
        .then(pl.lit("prompt text missing or empty"))
        .when(pl.col("text").is_null() | (pl.col("text").str.strip_chars() == ""))
        .then(pl.lit("completion text missing or empty"))
    )
    joined = joined.with_columns(reason.alias("_reason"))
    bad = joined.filter(pl.col("_reason").is_not_null())
    quarantine = bad.select(
        pl.col("completion_id").alias("row_key"),
        pl.col("_reason").alias("reason"),
        pl.struct(pl.exclude("_reason")).struct.json_encode().alias("payload"),
    )
    rows = joined.filter(pl.col("_reason").is_null()).select(
        message("user", pl.col("prompt_text")).alias("prompt"),
        message("assistant", pl.col("text")).alias("completion"),
        *[pl.col(c).cast(t) for c, t in SFT_ROWS.items() if c not in ("prompt", "completion")],
    )
    return rows.sort("prompt_id"), quarantine


def sft_rows(
    selections: pl.DataFrame, prompts: pl.DataFrame, generations: pl.DataFrame, strategies: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """to_sft_rows for each of `strategies` (in order), as one frame and one quarantine frame."""
    done = [to_sft_rows(selections.filter(pl.col("strategy") == s), prompts, generations) for s in strategies]
    return pl.concat([rows for rows, _ in done], how="diagonal_relaxed"), pl.concat([q for _, q in done])
