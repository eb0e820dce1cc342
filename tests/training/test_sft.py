"""SFT stage: completion-only masking, crash + resume, reuse, quarantine, device choice."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from training.device import pick_device, trainer_device_args
from training.run_dir import StageRun
from training.sft import SFTStageConfig, build_sft_trainer, split_sft_rows, train_sft

TEXTS = ["hello how are you today", "bonjour comment ça va", "hola qué tal estás", "I am fine thanks a lot"]


@pytest.fixture(scope="module")
def base_model(tiny_lm):
    return tiny_lm(TEXTS * 4)


def sft_rows(n: int = 8) -> list[dict]:
    return [
        {
            "prompt_id": f"p{i}",
            "language": "en",
            "prompt": [{"role": "user", "content": TEXTS[i % 4]}],
            "completion": [{"role": "assistant", "content": TEXTS[(i + 1) % 4]}],
        }
        for i in range(n)
    ]


def tiny_cfg(**kw) -> SFTStageConfig:
    return SFTStageConfig(
        **{"max_steps": 6, "batch_size": 4, "logging_steps": 2, "save_steps": 2, "device": "cpu", **kw}
    )


class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class FirstStep(TrainerCallback):
    """Records the global step the trainer starts from."""

    def __init__(self):
        self.start = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is None:
            self.start = state.global_step


@pytest.mark.parametrize("completion_only", [True, False])
def test_collated_labels_mask_prompt_tokens(base_model, tmp_path, completion_only):
    rows = sft_rows(2)
    trainer = build_sft_trainer(base_model, rows, tmp_path / "work", tiny_cfg(completion_only_loss=completion_only))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    tok = AutoTokenizer.from_pretrained(base_model)
    for i, row in enumerate(rows):
        prompt_len = len(tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"])
        n = int(batch["attention_mask"][i].sum())
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        assert labels[n:].eq(-100).all()  # padding never trains
        assert labels[prompt_len:n].equal(ids[prompt_len:n])  # completion (+ end token) trains
        if completion_only:
            assert labels[:prompt_len].eq(-100).all()
            trained = tok.decode(labels[prompt_len:n], skip_special_tokens=True)
            assert trained == row["completion"][0]["content"]
        else:
            assert labels[:prompt_len].equal(ids[:prompt_len])


def test_crash_then_resume_then_reuse(base_model, tmp_path):
    out = tmp_path / "sft_model"
    rows = sft_rows(8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sft(base_model, rows, out, tiny_cfg(), progress=False, callbacks=[CrashAt(3)])
    work = tmp_path / "sft_model.work"
    assert not out.exists()  # no half-written model
    assert (work / "checkpoint-2" / "trainer_state.json").exists()

    first = FirstStep()
    metrics = train_sft(base_model, rows, out, tiny_cfg(), progress=False, callbacks=[first])
    assert first.start == 2  # continued from the checkpoint, not from step 0
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 6
    assert metrics["n_examples"] == 8 and metrics["device"] == "cpu" and not metrics["reused"]
    assert metrics["final_loss"] > 0 and [s for s, _ in metrics["loss_curve"]] == [2, 4, 6]
    assert json.loads((out / "metrics.json").read_text())["config_hash"] == metrics["config_hash"]
    assert not work.exists() and not (tmp_path / "sft_model.tmp").exists()

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    enc = tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > enc["input_ids"].shape[1]
    base = AutoModelForCausalLM.from_pretrained(base_model)
    assert not torch.equal(base.model.embed_tokens.weight, model.model.embed_tokens.weight)  # it trained

    again = train_sft(base_model, rows, out, tiny_cfg(), progress=False, callbacks=[CrashAt(1)])
    assert again["reused"] and again["config_hash"] == metrics["config_hash"]


def test_stage_run_resumes_only_matching_complete_checkpoints(tmp_path):
    run = StageRun(tmp_path / "m", "aaa")
    assert run.prepare() is None  # fresh
    for step, complete in ((2, True), (4, True), (6, False)):
        ck = run.work_dir / f"checkpoint-{step}"
        ck.mkdir()
        (ck / "model.safetensors").write_bytes(b"x")
        if complete:
            (ck / "optimizer.pt").write_bytes(b"x")
            (ck / "trainer_state.json").write_text("{}")
    assert run.prepare() == str(run.work_dir / "checkpoint-4")
    assert not (run.work_dir / "checkpoint-6").exists()  # incomplete one dropped
    assert StageRun(tmp_path / "m", "bbb").prepare() is None  # another config starts clean
    assert [p.name for p in run.work_dir.iterdir()] == ["run.json"]


def test_split_sft_rows_quarantines_bad_rows():
    rows = sft_rows(3)
    rows[1]["completion"] = [{"role": "assistant", "content": "  "}]
    rows[2]["prompt"] = [{"role": "assistant", "content": "hi"}]
    rows.append({"completion_id": "c9", "prompt": "not a list", "completion": []})
    kept, quarantine = split_sft_rows(rows)
    assert len(kept) + quarantine.height == len(rows)
    assert set(kept[0]) == {"prompt", "completion"}  # id columns dropped
    assert quarantine["row_key"].to_list() == ["p1", "p2", "c9"]
    assert "empty" in quarantine["reason"][0] and "user" in quarantine["reason"][1]
    assert json.loads(quarantine["payload"][2])["prompt"] == "not a list"


def test_pick_device_cpu_path():
    device, dtype = pick_device("cpu")
    assert (device, dtype) == ("cpu", torch.float32)
    assert trainer_device_args(device)["use_cpu"] and not trainer_device_args(device)["bf16"]
    assert trainer_device_args("cuda")["bf16"]
    if torch.cuda.is_available():
        assert pick_device() == ("cuda", torch.bfloat16)
    else:
        assert pick_device() == ("cpu", torch.float32)
        with pytest.raises(RuntimeError):
            pick_device("cuda")
    with pytest.raises(ValueError):
        pick_device("tpu")
