from __future__ import annotations

import json
import math

import pytest

from factory.generation.base import SamplingConfig
from factory.generation.registry import TeacherConfig, make_backend
from factory.languages import CLUSTERS
from factory.sources.chatterbot import Dialog
from training.teachers import EmbeddedPoolConfig, build_embedded_pool, cap_per_language, cluster_dialogs

TINY = EmbeddedPoolConfig(
    vocab_size=320, hidden_size=32, layers=1, heads=2, max_length=48, base_steps=4, teacher_steps=3,
    batch_size=4, max_dialogs_per_language=6, device="cpu", torch_threads=1,
)  # fmt: skip

SAMPLES = {
    "en": ("how are you today?", "I am fine, thanks."),
    "fr": ("comment vas-tu ?", "je vais bien, merci."),
    "nl": ("hoe gaat het met je?", "goed, dank je."),
    "ja": ("元気ですか？", "はい、元気です。"),
    "ru": ("как дела?", "всё хорошо, спасибо."),
}


def _dialogs(per_language: int = 8) -> list[Dialog]:
    return [
        Dialog(lang, f"{q} ({i})", [a], f"test:{lang}#{i}")
        for lang, (q, a) in SAMPLES.items()
        for i in range(per_language)
    ]


def test_cluster_data_is_own_plus_shared_languages():
    dialogs = _dialogs(2)
    assert {d.language for d in cluster_dialogs(dialogs, "east_asian")} == {"ja", "en", "fr"}
    assert {d.language for d in cluster_dialogs(dialogs, "west_european")} == {"nl", "en", "fr"}
    assert [d.source for d in cap_per_language(dialogs, 1)] == [f"test:{lang}#0" for lang in SAMPLES]


def test_builds_specialised_teachers_and_reuses_them(tmp_path, monkeypatch):
    import torch

    threads = torch.get_num_threads()
    info = build_embedded_pool(_dialogs(), tmp_path, TINY, progress=False)
    assert torch.get_num_threads() == threads  # torch_threads=1 applies to the build only
    # middle_eastern has none of its own languages in the data: no teacher for it
    assert set(info["teachers"]) == {"east_asian", "east_european", "west_european"} < set(CLUSTERS)
    assert info["base"]["languages"] == sorted(SAMPLES)
    assert info["teachers"]["east_asian"]["languages"] == ["en", "fr", "ja"]
    assert info["teachers"]["east_european"]["languages"] == ["en", "fr", "ru"]
    for model in [info["base"], *info["teachers"].values()]:
        m = model["metrics"]
        assert math.isfinite(m["final_loss"]) and m["n_params"] > 1000 and m["seconds"] > 0
        assert m["n_examples"] == len({lang for lang in model["languages"]}) * TINY.max_dialogs_per_language
        assert model["reused"] is False
        build = json.loads((tmp_path / model["path"] / "build.json").read_text())
        assert build["hash"] == model["hash"] and build["stage"] == model["stage"]
    assert info["teachers"]["east_asian"]["path"] == str(tmp_path / "teachers" / "east_asian")
    assert info["base"]["metrics"]["steps"] == 4 and info["teachers"]["east_asian"]["metrics"]["steps"] == 3

    # same inputs: nothing retrains
    import training.pretrain

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although inputs are unchanged")

    monkeypatch.setattr(training.pretrain, "train_causal_lm", no_training)
    again = build_embedded_pool(_dialogs(), tmp_path, TINY, progress=False)
    assert again["tokenizer"]["reused"] and again["base"]["reused"]
    assert all(t["reused"] for t in again["teachers"].values())
    assert {k: t["hash"] for k, t in again["teachers"].items()} == {k: t["hash"] for k, t in info["teachers"].items()}
    # changed teacher config: the base is reused, the teachers are not
    with pytest.raises(AssertionError, match="retrained"):
        build_embedded_pool(_dialogs(), tmp_path, TINY.model_copy(update={"teacher_steps": 2}), progress=False)
    monkeypatch.undo()
    changed = build_embedded_pool(_dialogs(), tmp_path, TINY.model_copy(update={"teacher_steps": 2}), progress=False)
    assert changed["base"]["reused"] and not changed["teachers"]["east_asian"]["reused"]

    # an embedded teacher generates through the registry
    cfg = TeacherConfig(name="east_asian", model="embedded:east_asian", device="cpu")
    backend = make_backend(cfg, model_path=changed["teachers"]["east_asian"]["path"])
    out = backend.generate([[{"role": "user", "content": "元気ですか？"}]], SamplingConfig(max_new_tokens=5), n=2)
    assert len(out[0]) == 2 and all(1 <= c.n_tokens <= 5 for c in out[0])


def test_a_cluster_teacher_beats_other_teachers_on_its_own_languages(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.pretrain import mean_token_loss
    from training.teachers import dialog_conversation

    cfg = TINY.model_copy(update={"base_steps": 5, "teacher_steps": 40, "max_dialogs_per_language": 20})
    dialogs = _dialogs(24)
    train = [d for d in dialogs if not d.source.endswith(("#20", "#21", "#22", "#23"))]
    held = [d for d in dialogs if d not in train]
    info = build_embedded_pool(train, tmp_path, cfg, languages=["en", "fr", "ja", "ru"], progress=False)
    assert set(info["teachers"]) == {"east_asian", "east_european"}  # nl was filtered out: no west_european
    tok = AutoTokenizer.from_pretrained(info["base"]["path"])
    models = {c: AutoModelForCausalLM.from_pretrained(t["path"]) for c, t in info["teachers"].items()}
    for lang, own, other in (("ja", "east_asian", "east_european"), ("ru", "east_european", "east_asian")):
        convs = [dialog_conversation(d) for d in held if d.language == lang]
        own_loss, other_loss = mean_token_loss(models[own], tok, convs), mean_token_loss(models[other], tok, convs)
        assert own_loss < other_loss - 0.5
