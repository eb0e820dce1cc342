"""Column contracts of the warehouse tables, declared once.

Each schema feeds the table's Parquet schema (`conform`), the asset's column
metadata, and the schema asset checks. Columns are the design's minimum plus
what users need; a producer may add columns, never drop these.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES = pl.List(MESSAGE)  # a conversation in TRL's conversational format

PROMPTS = {
    "prompt_id": pl.String,
    "language": pl.String,
    "text": pl.String,
    "split": pl.String,  # train | dev | eval
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

# One routed pick: the completion a strategy selected for a prompt.
_PICK = {
    "prompt_id": pl.String,
    "language": pl.String,
    "strategy": pl.String,
    "completion_id": pl.String,
    "teacher": pl.String,
    "reward": pl.Float64,
}

SELECTIONS = {
    **_PICK,
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
    "rule": pl.String,  # reward | language | translation (see PAIR_RULE_DEFAULT)
}

# Per prompt the best and worst eligible completion, written by the selections step beside the
# selections (one pass over the scored table) and read by preference_pairs for best_worst.
PAIR_CANDIDATES = {
    "prompt_id": pl.String,
    "language": pl.String,
    "n_eligible": pl.Int64,
    **{f"{side}_{c}": t for side in ("chosen", "rejected") for c, t in
       (("completion_id", pl.String), ("teacher", pl.String), ("reward", pl.Float64), ("text", pl.String))},
    "run_id": pl.String,
}

SFT_DATA = {  # TRL's conversational prompt-completion format, plus ids
    "prompt": MESSAGES,
    "completion": MESSAGES,
    **_PICK,
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

# Quarantine partitions that are not languages: `all` (an unpartitioned step's rows) and the prompts
# step's rows that no language partition of the run takes.
UNPARTITIONED = "all"
UNROUTED = "unrouted"

QUARANTINE = {
    "asset": pl.String,
    "partition": pl.String,
    "row_key": pl.String,  # the id of the rejected row when it has one, else its position
    "code": pl.String,  # a short machine-readable cause (duplicate, empty, ...), to group by
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
    "pair_candidates": PAIR_CANDIDATES,
    "sft_data": SFT_DATA,
    "checkpoints": CHECKPOINTS,
    "judgments": JUDGMENTS,
    "win_rates": WIN_RATES,
    "quarantine": QUARANTINE,
    "lineage": LINEAGE,
}


# What a step hands to Warehouse.quarantine: the rejected row's key, why, and the row itself as JSON.
REJECTED = {"row_key": pl.String, "reason": pl.String, "payload": pl.String}


def rejected(row_key: str, reason: str, row: Any) -> dict[str, str]:
    """One rejected row: `row` (a dict or any value) is kept whole as JSON in `payload`."""
    return {"row_key": str(row_key), "reason": reason, "payload": json.dumps(row, ensure_ascii=False, default=str)}


def rejected_frame(rows: list[dict] | None = None, with_code: bool = False) -> pl.DataFrame:
    """Rejected rows (from `rejected`) as a frame with the REJECTED columns (and `code`, a short
    machine-readable cause, when the rows carry one), empty by default."""
    return pl.DataFrame(rows or [], schema={**REJECTED, "code": pl.String} if with_code else REJECTED)


# Which rule made a preference pair, for producers that do not say: pairs ranked by reward
# (best_worst, and online pairs of the reward rule) are "reward", native_vs_translated pairs are
# "translation". Online pairs of the language rule (a right-language chosen over the policy's
# top-reward answer in the wrong language, factory.pairs.language_guarded_pairs) say "language".
PAIR_RULE_DEFAULT = (
    pl.when(pl.col("method") == "native_vs_translated").then(pl.lit("translation")).otherwise(pl.lit("reward"))
)
# Columns a producer may leave out (or null): conform fills them from the row's other columns.
DEFAULTS: dict[str, pl.Expr] = {"rule": PAIR_RULE_DEFAULT}


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Cast `df` to `schema`, declared columns first; extra columns are kept after them.
    A column with a DEFAULTS entry is filled from it where missing or null.

    Raises a ValueError naming the missing columns, or the integer columns given fractional floats
    (a cast would truncate them), so a producer that breaks the contract fails loudly at write time
    rather than downstream.
    """
    missing = [c for c in schema if c not in df.columns and c not in DEFAULTS]
    if missing:
        raise ValueError(f"missing required columns: {', '.join(missing)}")
    filled = [
        (pl.col(c).fill_null(DEFAULTS[c]) if c in df.columns else DEFAULTS[c]).alias(c)
        for c in schema if c in DEFAULTS
    ]
    if filled:
        df = df.with_columns(filled)
    fractional = [c for c, t in schema.items() if t.is_integer() and c in df.columns and df.schema[c].is_float()
                  and df.select((pl.col(c) != pl.col(c).round()).any()).item()]  # a cast would truncate them silently
    if fractional:
        raise ValueError(f"columns declared integer hold fractional values: {', '.join(fractional)}")
    extra = [c for c in df.columns if c not in schema]
    return df.select([pl.col(c).cast(t) for c, t in schema.items()] + extra)


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


# -- column descriptions -----------------------------------------------------------------
# One line per column, for the Dagster UI (`dagster/column_schema`) and anyone reading a table.
# A column means the same in every table unless TABLE_COLUMN_DOCS overrides it there.
COLUMN_DOCS: dict[str, str] = {
    "prompt_id": "Content hash of (language, normalised prompt text); stable across reruns.",
    "completion_id": "Content hash of (prompt_id, teacher, model, sampling, sample_index).",
    "pair_id": "Content hash of (prompt_id, method, round, chosen and rejected completion ids).",
    "checkpoint_id": "Content hash of (stage, config, dataset versions, parents).",
    "judgment_id": "Content hash of (prompt_id, model, baseline, judge, order).",
    "language": "Language code (one of the Aya languages, e.g. fr, zh-Hans).",
    "text": "The text itself.",
    "split": "train; dev (held out by prompt, for the online rounds' stop decision); or eval (held out, never trained or tuned on).",
    "source": "Where the prompt came from (source label, e.g. chatterbot-corpus and its file).",
    "origin": "native (written in the language) or translated.",
    "references": "Reference replies from the source, for reference-based judging.",
    "teacher": "Name of the teacher model that wrote the completion.",
    "backend": "Generation backend that ran the teacher (transformers, vllm, openai).",
    "sample_index": "Index of this sample among the k drawn for the prompt.",
    "sampling": "Sampling parameters as JSON.",
    "n_tokens": "Completion length in tokens.",
    "finish_reason": "stop, length (hit max tokens) or error.",
    "seconds": "Wall-clock seconds spent generating.",
    "scorer": "Scorer that gave the reward (arbiter, or another configured scorer).",
    "reward": "Reward model score of the completion.",
    "reward_z": "Reward standardised within the language (z-score).",
    "detected_language": "Language detected in the completion.",
    "language_match": "Whether the detected language is the prompt's; mismatches are never selected.",
    "truncated": "Whether the scorer truncated the input to fit its context.",
    "strategy": "Routing strategy that chose the completion (reward_routing, single_teacher, ...).",
    "margin": "Reward margin: chosen minus rejected (pairs), or winner minus runner-up (selections).",
    "method": "How the pair was built: best_worst, native_vs_translated, or online.",
    "round": "0 for offline pairs; k for online DPO round k.",
    "rule": "Which rule made the pair: reward (best vs worst reward), language (online: the best right-language "
            "answer over the policy's top-reward answer in the wrong language), translation (native_vs_translated).",
    "chosen_language_match": "Whether the chosen reply is in the prompt's language (online pairs).",
    "rejected_language_match": "Whether the rejected reply is in the prompt's language (online pairs).",
    "prompt": "Prompt as a list of {role, content} messages (TRL conversational format).",
    "completion": "Target reply as a list of {role, content} messages.",
    "chosen": "Preferred reply as a list of {role, content} messages.",
    "rejected": "Dispreferred reply as a list of {role, content} messages.",
    "chosen_completion_id": "completion_id of the chosen reply (lineage to generations).",
    "rejected_completion_id": "completion_id of the rejected reply (lineage to generations).",
    "chosen_reward": "Reward of the chosen reply.",
    "rejected_reward": "Reward of the rejected reply.",
    "stage": "What made the model: base, teacher, reward_model, sft, dpo_offline, dpo_online_k, cluster, merged, ...",
    "name": "Model name (the asset or cluster that produced it).",
    "path": "Path of the model folder, relative to FACTORY_HOME when under it, or a hub id.",
    "parents": "checkpoint_ids the model was trained or merged from.",
    "datasets": "JSON of the dataset versions the model was trained on.",
    "config": "Training or merge config as JSON.",
    "metrics": "Training metrics as JSON.",
    "created_at": "When the row was written (UTC).",
    "judge": "Judge that gave the verdict (reference, reward:<scorer>, llm:<model>).",
    "model": "checkpoint_id of the evaluated model.",
    "baseline": "checkpoint_id of the baseline it is compared with.",
    "verdict": "win, tie or loss for the model against the baseline.",
    "score": "1 for a win, 0.5 for a tie, 0 for a loss.",
    "model_text": "The evaluated model's answer.",
    "baseline_text": "The baseline's answer.",
    "wins": "Prompts the model won.",
    "ties": "Prompts tied (each counts half a win).",
    "losses": "Prompts the model lost.",
    "n": "Prompts judged (wins + ties + losses).",
    "win_rate": "(wins + ties / 2) / n; for language 'all', the mean over languages.",
    "ci_low": "Lower end of the 95% bootstrap confidence interval of win_rate.",
    "ci_high": "Upper end of the 95% bootstrap confidence interval of win_rate.",
    "asset": "Dagster asset the row is about.",
    "partition": "Partition key (language), or 'all' for unpartitioned assets.",
    "row_key": "Id of the rejected row when it has one, else its position.",
    "code": "Short machine-readable cause (duplicate, empty, ...), to group by.",
    "reason": "Why the row was rejected, in words.",
    "payload": "The rejected row as JSON, so nothing is lost.",
    "quarantined_at": "When the row was quarantined (UTC).",
    "table": "Warehouse table written.",
    "code_version": "Version of the factory code that wrote it.",
    "data_version": "Content hash of the written partition.",
    "input_versions": "JSON of the data version of every input partition read.",
    "row_count": "Rows written.",
    "started_at": "When the step started loading its inputs (UTC).",
    "finished_at": "When the output was written (UTC).",
    "producer": "Asset that wrote these rows into a table shared by several assets.",
    "policy_heldout_reward": "Mean Arbiter reward of the round's sampled policy on the dev prompts (online rounds).",
    "policy_heldout_tokens": "Mean length of the round's sampled policy's answers on the dev prompts (online rounds).",
    "policy_heldout_language_match": "Language-match rate of the round's sampled policy on the dev prompts.",
    "run_id": "Dagster run that wrote the row.",
}

TABLE_COLUMN_DOCS: dict[str, dict[str, str]] = {
    "prompts": {"text": "The prompt (a user turn)."},
    "generations": {"text": "The completion text."},
    "selections": {
        "reward": "Reward of the selected completion.",
        "margin": "Reward minus the runner-up's (reward_routing); 0 for other strategies.",
        "teacher": "Teacher whose completion was selected.",
    },
    "preference_pairs": {"margin": "chosen_reward minus rejected_reward."},
    "pair_candidates": {
        "n_eligible": "Completions of the prompt a pair may use (scored, and in the prompt's language when required).",
        "chosen_completion_id": "completion_id of the highest-reward eligible completion (null: none is eligible).",
        "rejected_completion_id": "completion_id of the lowest-reward eligible completion (null: none is eligible).",
        "chosen_teacher": "Teacher of the highest-reward eligible completion.",
        "rejected_teacher": "Teacher of the lowest-reward eligible completion.",
        "chosen_reward": "Reward of the highest-reward eligible completion.",
        "rejected_reward": "Reward of the lowest-reward eligible completion.",
        "chosen_text": "Text of the highest-reward eligible completion.",
        "rejected_text": "Text of the lowest-reward eligible completion.",
    },
    "sft_data": {"reward": "Reward of the selected completion.", "teacher": "Teacher whose completion is the target."},
    "win_rates": {
        "language": "Language code, or 'all' for the macro average over languages.",
        "stage": "Stage of the evaluated model (sft_arbitrage, dpo_offline, ...).",
    },
    "lineage": {
        "path": "Written file, relative to FACTORY_HOME.",
        "partition": "Partition key (language), or '' for unpartitioned assets.",
        "asset": "Dagster asset materialized.",
    },
    "judgments": {"stage": "Stage of the evaluated model (sft_arbitrage, dpo_offline, ...)."},
}


def column_description(table: str, column: str) -> str | None:
    """One-line description of `column` in `table` (None for a column nobody described)."""
    return TABLE_COLUMN_DOCS.get(table, {}).get(column) or COLUMN_DOCS.get(column)
