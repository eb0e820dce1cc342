"""A finished training run is reused only while its published files are intact."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from safetensors.numpy import save_file

from training.run_dir import OUTPUTS_FILE, StageRun, checkpointing_arg, output_damage, quick_hash, safetensors_damage


class FakeModel:
    def __init__(self, n: int = 1000):
        self.n = n

    def save_pretrained(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"w": np.arange(self.n, dtype=np.float32), "b": np.ones(3, dtype=np.float32)},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text('{"model_type": "llama"}')


class FakeTokenizer:
    def save_pretrained(self, folder):
        (folder / "tokenizer.json").write_text('{"version": "1.0"}')


@pytest.fixture
def finished(tmp_path) -> StageRun:
    run = StageRun(tmp_path / "sft_model", "fp1")
    run.prepare()
    run.commit(FakeModel(), FakeTokenizer(), {"config_hash": "fp1", "train_loss": 1.5})
    return run


def test_publish_records_sizes_and_hashes_and_an_intact_run_is_reused(finished):
    recorded = json.loads((finished.out_dir / OUTPUTS_FILE).read_text())
    assert set(recorded) == {"model.safetensors", "config.json", "tokenizer.json", "metrics.json"}
    weights = finished.out_dir / "model.safetensors"
    assert recorded["model.safetensors"] == {"size": weights.stat().st_size, "blake2b": quick_hash(weights)}
    assert finished.finished() == {"config_hash": "fp1", "train_loss": 1.5, "reused": True}
    assert StageRun(finished.out_dir, "other").finished() is None  # another config never reuses it


def _truncate(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    "damage,why",
    [
        (lambda d: _truncate(d / "model.safetensors", 200), "model.safetensors is 200 bytes"),
        (lambda d: _truncate(d / "tokenizer.json", 5), "tokenizer.json is 5 bytes, 18 when the run finished"),
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:-4] + b"\x00\x00\x80\x7f"), "model.safetensors changed"),
        (lambda d: (d / OUTPUTS_FILE).write_text("{"), "outputs.json is unreadable"),
    ],
)
def test_a_damaged_output_is_not_reused_and_the_log_says_why(finished, caplog, damage, why):
    damage(finished.out_dir)
    with caplog.at_level(logging.INFO, logger="training.run_dir"):
        assert finished.finished() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and why in lines[0] and str(finished.out_dir) in lines[0], lines


def test_a_run_from_before_outputs_json_gets_the_structural_check(finished):
    (finished.out_dir / OUTPUTS_FILE).unlink()
    assert finished.finished()["reused"]  # intact weights: reused
    weights = finished.out_dir / "model.safetensors"
    _truncate(weights, weights.stat().st_size - 1)
    assert finished.finished() is None


def test_safetensors_structure(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.zeros(10, dtype=np.float32)}, str(path))
    assert safetensors_damage(path) is None
    data = path.read_bytes()
    path.write_bytes(data + b"\0")
    assert "its tensors need" in safetensors_damage(path)
    path.write_bytes(data[:6])
    assert "shorter than its header" in safetensors_damage(path)
    path.write_bytes((8).to_bytes(8, "little") + b"not json" + b"\0" * 40)
    assert "unreadable header" in safetensors_damage(path)
    assert output_damage(tmp_path / "empty") == "no *.safetensors in it"


def test_train_sft_retrains_after_its_weights_were_truncated(tmp_path, caplog):
    from training.sft import SFTStageConfig, train_sft
    from training.tiny import init_causal_lm, save_model, train_tokenizer

    texts = ["hello how are you today", "bonjour comment ça va", "hola qué tal estás", "I am fine thanks a lot"]
    tok = train_tokenizer(texts * 4, vocab_size=300)
    base = save_model(init_causal_lm(tok, hidden_size=32, layers=1, heads=2), tok, tmp_path / "base")
    rows = [{"prompt_id": f"p{i}", "language": "en", "prompt": [{"role": "user", "content": texts[i % 4]}],
             "completion": [{"role": "assistant", "content": texts[(i + 1) % 4]}]} for i in range(8)]
    cfg = SFTStageConfig(max_steps=2, batch_size=4, logging_steps=1, save_steps=2, device="cpu")
    out = tmp_path / "sft"
    first = train_sft(base, rows, out, cfg, progress=False)
    assert train_sft(base, rows, out, cfg, progress=False)["reused"]
    weights = out / "model.safetensors"
    _truncate(weights, weights.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="training.run_dir"):
        again = train_sft(base, rows, out, cfg, progress=False)
    assert not again.get("reused") and again["config_hash"] == first["config_hash"]
    assert "model.safetensors is" in caplog.text
    assert output_damage(out) is None  # the retrained folder is whole again


def test_checkpointing_goes_under_the_name_the_arguments_class_takes():
    """transformers 5.17 (the GPU image's) refuses `activation_checkpointing`; newer ones renamed the field to it."""
    from trl import DPOConfig, RewardConfig, SFTConfig

    @dataclasses.dataclass
    class OldArgs:
        gradient_checkpointing: bool = True

    assert checkpointing_arg(OldArgs, False) == {"gradient_checkpointing": False}
    for cls in (SFTConfig, DPOConfig, RewardConfig):
        (name, value), = checkpointing_arg(cls, True).items()
        assert value is True and name in {f.name for f in dataclasses.fields(cls)}
