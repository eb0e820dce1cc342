"""Column contracts of the warehouse tables, declared once.

Each schema feeds the table's Parquet schema (`conform`), the asset's column
metadata, and the schema asset checks. Columns are the design's minimum plus
what users need; a producer may add columns, never drop these.
"""

from __future__ import annotations

import polars as pl

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES = pl.List(MESSAGE)  # a conversation in TRL's conversational format

PROMPTS = {
    "prompt_id": pl.String,
    "language": pl.String,
    "text": pl.String,
    "split": pl.String,  # train | eval
    "source": pl.String,
    "origin": pl.String,  # native | translated
    "references": pl.List(pl.String),  # reference replies, for reference-based judging
    "run_id": pl.String,
}

GENERATIONS = {
    "completion_id": pl.String,
    "prompt_id": pl.String,
    "language": pl.String,
    "teacher": pl.String,
    "backend": pl.String,
    "sample_index": pl.Int32,
    "sampling": pl.String,  # JSON of the sampling parameters
    "text": pl.String,
    "n_tokens": pl.Int32,
    "finish_reason": pl.String,  # stop | length | error
    "seconds": pl.Float64,
    "run_id": pl.String,
}

SCORES = {
    "completion_id": pl.String,
    "prompt_id": pl.String,
    "language": pl.String,
    "teacher": pl.String,
    "scorer": pl.String,
    "reward": pl.Float64,
    "reward_z": pl.Float64,
    "detected_language": pl.String,
    "language_match": pl.Boolean,
    "truncated": pl.Boolean,
    "run_id": pl.String,
}

SELECTIONS = {
    "prompt_id": pl.String,
    "language": pl.String,
    "strategy": pl.String,
    "completion_id": pl.String,
    "teacher": pl.String,
    "reward": pl.Float64,
    "margin": pl.Float64,  # reward minus the runner-up's (reward_routing); 0 elsewhere
    "run_id": pl.String,
}

PREFERENCE_PAIRS = {
    "pair_id": pl.String,
    "prompt_id": pl.String,
    "language": pl.String,
    "method": pl.String,  # best_worst | native_vs_translated | online
    "round": pl.Int32,  # 0 offline, k for online round k
    "prompt": MESSAGES,
    "chosen": MESSAGES,
    "rejected": MESSAGES,
    "chosen_completion_id": pl.String,
    "rejected_completion_id": pl.String,
    "chosen_reward": pl.Float64,
    "rejected_reward": pl.Float64,
    "margin": pl.Float64,
    "run_id": pl.String,
}

SFT_DATA = {  # TRL's conversational prompt-completion format, plus ids
    "prompt": MESSAGES,
    "completion": MESSAGES,
    "prompt_id": pl.String,
    "language": pl.String,
    "strategy": pl.String,
    "completion_id": pl.String,
    "teacher": pl.String,
    "reward": pl.Float64,
    "run_id": pl.String,
}

CHECKPOINTS = {
    "checkpoint_id": pl.String,
    "stage": pl.String,
    "name": pl.String,
    "path": pl.String,
    "parents": pl.List(pl.String),
    "datasets": pl.String,  # JSON: {table: data_version}
    "config": pl.String,  # JSON
    "metrics": pl.String,  # JSON
    "created_at": pl.Datetime("us", "UTC"),
    "run_id": pl.String,
}

JUDGMENTS = {
    "judgment_id": pl.String,
    "prompt_id": pl.String,
    "language": pl.String,
    "judge": pl.String,
    "model": pl.String,  # checkpoint_id of the evaluated model
    "baseline": pl.String,  # checkpoint_id of the baseline
    "stage": pl.String,
    "verdict": pl.String,  # win | tie | loss (model vs baseline)
    "score": pl.Float64,  # 1, 0.5, 0
    "model_text": pl.String,
    "baseline_text": pl.String,
    "run_id": pl.String,
}

WIN_RATES = {
    "stage": pl.String,
    "model": pl.String,
    "baseline": pl.String,
    "language": pl.String,  # a code, or "all" for the macro average
    "wins": pl.Int64,
    "ties": pl.Int64,
    "losses": pl.Int64,
    "win_rate": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "run_id": pl.String,
}

QUARANTINE = {
    "asset": pl.String,
    "partition": pl.String,
    "row_key": pl.String,  # the id of the rejected row when it has one, else its position
    "reason": pl.String,
    "payload": pl.String,  # the rejected row as JSON, so nothing is lost
    "run_id": pl.String,
    "quarantined_at": pl.Datetime("us", "UTC"),
}

LINEAGE = {
    "asset": pl.String,
    "table": pl.String,
    "partition": pl.String,
    "run_id": pl.String,
    "code_version": pl.String,
    "data_version": pl.String,
    "input_versions": pl.String,  # JSON: {"asset[partition]": data_version}
    "row_count": pl.Int64,
    "path": pl.String,
    "started_at": pl.Datetime("us", "UTC"),
    "finished_at": pl.Datetime("us", "UTC"),
}

TABLES: dict[str, dict[str, pl.DataType]] = {
    "prompts": PROMPTS,
    "generations": GENERATIONS,
    "scores": SCORES,
    "selections": SELECTIONS,
    "preference_pairs": PREFERENCE_PAIRS,
    "sft_data": SFT_DATA,
    "checkpoints": CHECKPOINTS,
    "judgments": JUDGMENTS,
    "win_rates": WIN_RATES,
    "quarantine": QUARANTINE,
    "lineage": LINEAGE,
}


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Cast `df` to `schema`, declared columns first; extra columns are kept after them.

    Raises a ValueError naming the missing columns, so a producer that breaks the
    contract fails loudly at write time rather than downstream.
    """
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"missing required columns: {', '.join(missing)}")
    extra = [c for c in df.columns if c not in schema]
    return df.select([pl.col(c).cast(t) for c, t in schema.items()] + extra)


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)
