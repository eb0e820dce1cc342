"""Supervised fine-tuning on the arbitrage selections, with TRL's SFTTrainer.

Input rows are TRL conversational prompt-completion rows:
`prompt = [{"role": "user", "content": ...}]`, `completion = [{"role": "assistant", "content": ...}]`;
any other columns (ids, rewards) are dropped before training. The loss covers
completion tokens only: prompt tokens are -100 in the labels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from training.run_dir import TrainLoopConfig, make_log_callback, stage_args, train_stage
from warehouse.schemas import rejected as rejected_row
from warehouse.schemas import rejected_frame

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
ID_COLUMNS = ("pair_id", "completion_id", "prompt_id")


class SFTStageConfig(TrainLoopConfig):
    """SFT stage settings; defaults fit the tiny embedded default on a CPU."""

    epochs: float = 2.0
    lr: float = 5e-4
    completion_only_loss: bool = Field(True, description="loss on completion tokens only (prompt masked)")
    assistant_only_loss: bool = Field(False, description="also mask non-assistant turns via {% generation %} markers")


def message_problem(messages: Any, field: str, last_role: str | None = None, single: bool = False) -> str | None:
    """Why `messages` is not a valid chat list (None when it is)."""
    if not isinstance(messages, list) or not messages:
        return f"{field} is not a non-empty list of messages"
    if single and len(messages) != 1:
        return f"{field} must hold exactly one message, got {len(messages)}"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"{field} has a malformed message: {m!r:.80}"
    if not messages[-1]["content"].strip():
        return f"{field} ends with an empty message"
    if last_role and messages[-1]["role"] != last_role:
        return f"{field} must end with a {last_role} message, got {messages[-1]['role']}"
    return None


def _clean(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def row_key(row: dict, position: int) -> str:
    """The row's id for quarantine: pair_id, completion_id or prompt_id, else its position."""
    return next((str(row[c]) for c in ID_COLUMNS if row.get(c)), str(position))


def as_dicts(rows: pl.DataFrame | list[dict]) -> list[dict]:
    return rows.to_dicts() if isinstance(rows, pl.DataFrame) else list(rows)


def quarantine_frame(rejected: list[tuple[str, str, dict]]) -> pl.DataFrame:
    """Rows of (row_key, reason, row) as the quarantine columns (payload = row as JSON)."""
    return rejected_frame([rejected_row(key, reason, row) for key, reason, row in rejected])


def split_sft_rows(rows: pl.DataFrame | list[dict]) -> tuple[list[dict], pl.DataFrame]:
    """Split rows into trainable {prompt, completion} dicts and a quarantine frame (row_key, reason, payload)."""
    kept, rejected = [], []
    for i, row in enumerate(as_dicts(rows)):
        problem = message_problem(row.get("prompt"), "prompt", last_role="user") or message_problem(
            row.get("completion"), "completion", last_role="assistant", single=True
        )
        if problem:
            rejected.append((row_key(row, i), problem, row))
        else:
            kept.append({"prompt": _clean(row["prompt"]), "completion": _clean(row["completion"])})
    return kept, quarantine_frame(rejected)


def _sft_trainer(
    base_model_dir: str | Path,
    kept: list[dict],
    work_dir: Path,
    cfg: SFTStageConfig,
    progress: bool,
    callbacks: list | None,
) -> tuple[Any, Any, str]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    args, device = stage_args(
        SFTConfig, cfg, work_dir, progress, completion_only_loss=cfg.completion_only_loss,
        assistant_only_loss=cfg.assistant_only_loss, packing=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    # float32 master weights on every device; CUDA adds bf16 autocast (see training.device).
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(kept),
        processing_class=tokenizer,
        callbacks=[make_log_callback("sft"), *(callbacks or [])],
    )
    return trainer, tokenizer, device


def build_sft_trainer(
    base_model_dir: str | Path, rows: pl.DataFrame | list[dict],
    work_dir: str | Path, cfg: SFTStageConfig | None = None, progress: bool = False,
) -> Any:
    """An SFTTrainer over the valid rows, without training (for inspection: datasets, collated batches)."""
    kept, _ = split_sft_rows(rows)
    return _sft_trainer(base_model_dir, kept, Path(work_dir), cfg or SFTStageConfig(), progress, None)[0]


def train_sft(
    base_model_dir: str | Path, rows: pl.DataFrame | list[dict], out_dir: str | Path,
    cfg: SFTStageConfig | None = None, progress: bool = True, *, callbacks: list | None = None,
) -> dict:
    """Fine-tune `base_model_dir` on prompt-completion `rows`; save the model to `out_dir`; return metrics.

    Crash-safe and resumable (see training.run_dir): a rerun resumes from the newest
    checkpoint of the same config, and returns at once when `out_dir` already holds
    this exact run. Invalid rows are skipped and counted (`n_quarantined`); call
    `split_sft_rows` to get them as a quarantine frame.
    """
    cfg = cfg or SFTStageConfig()
    kept, quarantine = split_sft_rows(rows)
    if not kept:
        raise ValueError(f"no valid SFT rows ({quarantine.height} quarantined)")
    return train_stage(
        "sft", out_dir, cfg, [base_model_dir], kept, quarantine.height,
        lambda work_dir: _sft_trainer(base_model_dir, kept, work_dir, cfg, progress, callbacks),
        {"base_model": str(base_model_dir)},
    )
