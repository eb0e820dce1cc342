from __future__ import annotations

from tests.warehouse.publish.conftest import DIALOGS, SOURCE_INFO
from warehouse.publish import publish_dataset


def test_trl_dpo_trains_on_published_pairs_as_is(pairs, tmp_path):
    import copy

    import torch
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    from training.tiny import init_causal_lm, train_tokenizer

    folder = publish_dataset(
        pairs, tmp_path / "pairs", name="tiny-pairs", licenses=["bsd-3-clause"], source_info=SOURCE_INFO
    )
    dataset = load_dataset(str(folder), name="en", split="train", cache_dir=str(tmp_path / "hf_cache"))
    texts = [t for items in DIALOGS.values() for row in items for t in row]
    tokenizer = train_tokenizer(texts * 5, vocab_size=400, max_length=64)
    model = init_causal_lm(tokenizer, hidden_size=32, layers=1, heads=2, max_positions=64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        max_length=64,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    # An in-memory policy has no hub path, so TRL needs the frozen reference passed explicitly.
    ref_model = copy.deepcopy(model)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 2
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
