"""TRL trains on our SFT rows and preference pairs as they are (a couple of steps, tiny model)."""

from __future__ import annotations

import copy
import math

import polars as pl
import pytest

from factory.pairs import best_worst
from factory.routing import select
from factory.sft_data import to_sft_rows


def _texts(scored, prompts):
    return scored["text"].to_list() + prompts["text"].to_list()


def _common(tmp_path):
    return dict(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, report_to="none",
        use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no", logging_steps=1, max_length=64,
        dataloader_num_workers=0, seed=0,
    )


def _changed(model, before: dict) -> bool:
    return any(not p.detach().eq(before[n]).all() for n, p in model.named_parameters())


def test_sft_rows_shape_and_quarantine(scored, prompts):
    sel, _ = select(scored, ["reward_routing"])
    rows, q = to_sft_rows(sel, prompts, scored.select("completion_id", "text"))
    de = rows.filter(pl.col("language") == "de").row(0, named=True)
    assert de["prompt"] == [{"role": "user", "content": "Wie ist das Wetter heute?"}]
    assert de["completion"] == [{"role": "assistant", "content": "Es ist heute sonnig."}]
    assert (de["strategy"], de["teacher"], de["reward"]) == ("reward_routing", "west_european", 3.0)
    rows2, q2 = to_sft_rows(sel, prompts.filter(pl.col("language") != "de"), scored.select("completion_id", "text"))
    assert rows2.height == rows.height - 1 and q2["reason"].to_list() == ["prompt text missing or empty"]
    assert q.is_empty()
    both, _ = select(scored, ["reward_routing", "fixed_routing"])
    with pytest.raises(ValueError, match="one strategy"):
        to_sft_rows(both, prompts, scored)


def test_sft_trainer_accepts_rows(scored, prompts, tiny_model_factory, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    sel, _ = select(scored, ["reward_routing"])
    rows, _ = to_sft_rows(sel, prompts, scored.select("completion_id", "text"))
    tok, model = tiny_model_factory(_texts(scored, prompts))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SFTConfig(**_common(tmp_path), completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_polars(rows), processing_class=tok)
    out = trainer.train()
    assert math.isfinite(out.training_loss) and _changed(model, before)


def test_dpo_trainer_accepts_pairs(scored, prompts, tiny_model_factory, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pairs, _ = best_worst(scored, prompts)
    tok, model = tiny_model_factory(_texts(scored, prompts))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(**_common(tmp_path), beta=0.1)
    # trl 1.16 rebuilds the reference from model.config's path when ref_model is None; an in-memory model has none
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_polars(pairs), processing_class=tok)
    out = trainer.train()
    assert math.isfinite(out.training_loss) and _changed(model, before)
