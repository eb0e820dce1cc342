"""Direct preference optimisation on preference pairs, with TRL's DPOTrainer.

Input rows are TRL conversational preference rows: `prompt` (ending with a user
turn), `chosen` and `rejected` (one assistant message each); other columns such
as pair_id or rewards are dropped. The reference model is a frozen copy of the
policy unless `ref_dir` names another model (e.g. the SFT model for a later
online round).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from training.run_dir import TrainLoopConfig, make_log_callback, stage_args, train_stage
from training.sft import as_dicts, message_problem, quarantine_frame, row_key

logger = logging.getLogger(__name__)

REWARD_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


class DPOStageConfig(TrainLoopConfig):
    """DPO stage settings; defaults fit the tiny embedded default on a CPU.

    TRL 1.16 has no `max_prompt_length`: `max_length` bounds prompt + completion.
    """

    beta: float = 0.1
    loss_type: str = Field("sigmoid", description="a TRL DPO loss: sigmoid, ipo, hinge, robust, apo_zero, ...")
    label_smoothing: float = 0.0
    rpo_alpha: float | None = Field(
        None, gt=0,
        description="RPO: add this weight times the NLL of the chosen answer to the DPO loss (TRL's 'sft' loss "
        "term); None trains on the preference loss alone",
    )
    lr: float = 5e-5
    epochs: float = 1.0


def dpo_loss_args(cfg: DPOStageConfig) -> dict[str, Any]:
    """The DPOConfig loss fields of `cfg`. TRL 1.x has no `rpo_alpha`: RPO is the loss list
    [loss_type, "sft"] weighted [1, rpo_alpha] (TRL's "sft" term is the mean token NLL of chosen)."""
    if cfg.rpo_alpha is None:
        return {"loss_type": [cfg.loss_type], "label_smoothing": cfg.label_smoothing}
    return {"loss_type": [cfg.loss_type, "sft"], "loss_weights": [1.0, cfg.rpo_alpha], "label_smoothing": cfg.label_smoothing}


def split_preference_rows(rows: pl.DataFrame | list[dict]) -> tuple[list[dict], pl.DataFrame]:
    """Split rows into trainable {prompt, chosen, rejected} dicts and a quarantine frame (row_key, reason, payload)."""
    kept, rejected = [], []
    for i, row in enumerate(as_dicts(rows)):
        problem = (
            message_problem(row.get("prompt"), "prompt", last_role="user")
            or message_problem(row.get("chosen"), "chosen", last_role="assistant", single=True)
            or message_problem(row.get("rejected"), "rejected", last_role="assistant", single=True)
        )
        if not problem and row["chosen"][0]["content"] == row["rejected"][0]["content"]:
            problem = "chosen and rejected are identical"
        if problem:
            rejected.append((row_key(row, i), problem, row))
            continue
        kept.append(
            {
                k: [{"role": m["role"], "content": m["content"]} for m in row[k]]
                for k in ("prompt", "chosen", "rejected")
            }
        )
    return kept, quarantine_frame(rejected)


def _frozen(model: Any) -> Any:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _dpo_trainer(
    policy_dir: str | Path,
    kept: list[dict],
    work_dir: Path,
    cfg: DPOStageConfig,
    ref_dir: str | Path | None,
    progress: bool,
    callbacks: list | None,
) -> tuple[Any, Any, str]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args, device = stage_args(DPOConfig, cfg, work_dir, progress, beta=cfg.beta, **dpo_loss_args(cfg))
    tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
    # Both models load from their folders, so a resumed run keeps the original
    # reference even though the policy weights come from the checkpoint.
    policy = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
    ref = _frozen(AutoModelForCausalLM.from_pretrained(str(ref_dir or policy_dir), dtype=torch.float32))
    trainer = DPOTrainer(
        model=policy,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(kept),
        processing_class=tokenizer,
        callbacks=[make_log_callback("dpo", REWARD_KEYS[:2]), *(callbacks or [])],
    )
    return trainer, tokenizer, device


def train_dpo(
    policy_dir: str | Path, rows: pl.DataFrame | list[dict], out_dir: str | Path, cfg: DPOStageConfig | None = None,
    ref_dir: str | Path | None = None, progress: bool = True, *, callbacks: list | None = None,
) -> dict:
    """DPO-train `policy_dir` on preference `rows` against a frozen reference; save to `out_dir`; return metrics.

    Metrics include train/final loss, `rewards/accuracies` and `rewards/margins`
    from the last logging step. Crash-safe and resumable like `train_sft`.
    Invalid rows are skipped and counted; `split_preference_rows` returns them.
    """
    cfg = cfg or DPOStageConfig()
    kept, quarantine = split_preference_rows(rows)
    if not kept:
        raise ValueError(f"no valid preference rows ({quarantine.height} quarantined)")
    return train_stage(
        "dpo", out_dir, cfg, [policy_dir, ref_dir], kept, quarantine.height,
        lambda work_dir: _dpo_trainer(policy_dir, kept, work_dir, cfg, ref_dir, progress, callbacks),
        {"policy_model": str(policy_dir), "ref_model": str(ref_dir or policy_dir)}, REWARD_KEYS,
    )
