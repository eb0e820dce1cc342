"""DPO stage: training moves the policy toward chosen, reward metrics, crash + resume, quarantine."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from training.dpo import DPOStageConfig, dpo_loss_args, split_preference_rows, train_dpo
from training.run_dir import stage_args

TEXTS = ["hello how are you today", "bonjour comment ça va", "hola qué tal estás", "I am fine thanks a lot"]
MSG = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


@pytest.fixture(scope="module")
def models(tiny_lm):
    texts = TEXTS * 4 + ["zz qq zz"]
    return tiny_lm(texts, seed=0), tiny_lm(texts, seed=1)


def pair_rows(n: int = 8) -> pl.DataFrame:
    """Preference pairs as the warehouse table holds them (polars list-of-struct columns, extra id columns)."""
    return pl.DataFrame(
        {
            "pair_id": [f"pair{i}" for i in range(n)],
            "chosen_reward": [1.0] * n,
            "prompt": [[{"role": "user", "content": TEXTS[i % 4]}] for i in range(n)],
            "chosen": [[{"role": "assistant", "content": TEXTS[(i + 1) % 4]}] for i in range(n)],
            "rejected": [[{"role": "assistant", "content": "zz qq zz"}] for _ in range(n)],
        },
        schema_overrides={"prompt": MSG, "chosen": MSG, "rejected": MSG},
    )


def tiny_cfg(**kw) -> DPOStageConfig:
    return DPOStageConfig(
        **{"max_steps": 4, "batch_size": 4, "logging_steps": 2, "save_steps": 2, "lr": 1e-3, "device": "cpu", **kw}
    )


def chosen_minus_rejected_logp(model_dir, row: dict) -> float:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt_len = len(tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"])
    total = []
    for key in ("chosen", "rejected"):
        ids = tok.apply_chat_template(row["prompt"] + row[key], return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        total.append(float(logp[prompt_len - 1 :].sum()))
    return total[0] - total[1]


class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_dpo_prefers_chosen_and_reports_rewards(models, tmp_path):
    policy, _ = models
    rows = pair_rows()
    out = tmp_path / "dpo"
    metrics = train_dpo(policy, rows, out, tiny_cfg(), progress=False)
    assert metrics["steps"] == 4 and metrics["n_examples"] == 8 and metrics["ref_model"] == str(policy)
    assert 0.0 <= metrics["rewards/accuracies"] <= 1.0
    assert metrics["rewards/margins"] > 0  # policy moved toward chosen relative to the frozen reference
    assert metrics["final_loss"] < metrics["first_loss"]
    row = rows.row(0, named=True)
    assert chosen_minus_rejected_logp(out, row) > chosen_minus_rejected_logp(policy, row)


def test_dpo_crash_resume_with_explicit_reference(models, tmp_path):
    policy, other = models
    out = tmp_path / "dpo"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_dpo(policy, pair_rows(), out, tiny_cfg(), ref_dir=other, progress=False, callbacks=[CrashAt(3)])
    assert not out.exists() and (tmp_path / "dpo.work" / "checkpoint-2").is_dir()
    metrics = train_dpo(policy, pair_rows(), out, tiny_cfg(), ref_dir=other, progress=False)
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    assert metrics["ref_model"] == str(other)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "hola"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert model.generate(**enc, max_new_tokens=3, do_sample=False).shape[1] > enc["input_ids"].shape[1]


def test_split_preference_rows_quarantines_bad_pairs():
    rows = pair_rows(4).to_dicts()
    rows[1]["rejected"] = rows[1]["chosen"]
    rows[2]["chosen"] = [{"role": "user", "content": "wrong role"}]
    rows[3]["prompt"] = None
    kept, quarantine = split_preference_rows(rows)
    assert len(kept) == 1 and set(kept[0]) == {"prompt", "chosen", "rejected"}
    assert quarantine["row_key"].to_list() == ["pair1", "pair2", "pair3"]
    assert quarantine["reason"][0] == "chosen and rejected are identical"
    assert "assistant" in quarantine["reason"][1] and "prompt" in quarantine["reason"][2]


def test_rpo_alpha_reaches_trl_as_an_sft_loss_term(tmp_path):
    from trl import DPOConfig

    plain, _ = stage_args(DPOConfig, tiny_cfg(), tmp_path, False, beta=0.1, **dpo_loss_args(tiny_cfg()))
    assert plain.loss_type == ["sigmoid"] and plain.loss_weights is None
    cfg = tiny_cfg(rpo_alpha=0.5, loss_type="ipo")
    args, _ = stage_args(DPOConfig, cfg, tmp_path, False, beta=cfg.beta, **dpo_loss_args(cfg))
    assert args.loss_type == ["ipo", "sft"] and args.loss_weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="rpo_alpha"):
        DPOStageConfig(rpo_alpha=0.0)


def test_dpo_trains_with_rpo_alpha(models, tmp_path):
    policy, _ = models
    metrics = train_dpo(policy, pair_rows(), tmp_path / "rpo", tiny_cfg(rpo_alpha=1.0), progress=False)
    assert metrics["steps"] == 4 and metrics["rewards/margins"] > 0
