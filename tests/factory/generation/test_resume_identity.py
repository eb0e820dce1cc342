"""Completion ids name the model that generated them: resume across unchanged reruns, regenerate after a change."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from factory.generation.base import SamplingConfig
from factory.generation.registry import TeacherConfig, make_backend, model_identity, with_model_path
from factory.generation.runner import generate_completions, read_shards
from factory.ids import weights_digest

from .fakes import make_prompts

K = 2


class CountingBackend:
    """Wraps a real backend and counts the conversations it is asked to answer."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.conversations = 0

    def generate(self, conversations, sampling, n=1):
        self.conversations += len(conversations)
        return self.inner.generate(conversations, sampling, n)


def _run(folder, prompts, shards, run_id):
    cfg = TeacherConfig(
        name="tiny", model=str(folder), batch_size=4, device="cpu", sampling=SamplingConfig(max_new_tokens=4, seed=5)
    )
    backend = CountingBackend(make_backend(cfg))
    gens, quarantine = generate_completions(prompts, [(cfg, backend)], K, shards, run_id, progress=False)
    assert quarantine.height == 0
    return gens, backend.conversations


def test_unchanged_rerun_resumes_and_changed_weights_regenerate(tmp_path, tiny_model_dir, eos_model_dir):
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, folder)
    prompts, shards = make_prompts(3), tmp_path / "shards"

    first, asked = _run(folder, prompts, shards, "r1")
    assert asked == 3 and first.height == 3 * K

    again, asked = _run(folder, prompts, shards, "r2")
    assert asked == 0  # nothing new: every id is already in the shards
    assert again.sort("completion_id").equals(first.sort("completion_id"))

    moved = tmp_path / "elsewhere" / "same-weights"
    shutil.copytree(folder, moved)
    same, asked = _run(moved, prompts, shards, "r3")
    assert asked == 0, "the identity is the weights' content, not the folder's path"
    assert set(same["completion_id"]) == set(first["completion_id"])

    shutil.copyfile(eos_model_dir / "model.safetensors", folder / "model.safetensors")  # retrained in place
    changed, asked = _run(folder, prompts, shards, "r4")
    assert asked == 3
    assert changed.height == 3 * K and set(changed["run_id"]) == {"r4"}
    assert not set(changed["completion_id"]) & set(first["completion_id"]), "old model's answers are not returned"
    old_model = json.loads(first["model"][0])["weights"]
    assert (
        set(changed["model"].map_elements(lambda m: json.loads(m)["weights"], return_dtype=pl.String))
        == {weights_digest(folder)}
        != {old_model}
    )
    # the old rows stay in the shards (a switch back resumes them) but are not part of this run's table
    assert read_shards(shards).height == 2 * 3 * K


def test_model_identity_per_backend(tmp_path, tiny_model_dir):
    served = TeacherConfig(name="big", backend="openai", model="llama-70b", api_base="http://10.0.0.1:8000/v1/")
    assert model_identity(served) == {"backend": "openai", "model": "llama-70b", "api_base": "http://10.0.0.1:8000/v1"}
    other_server = served.model_copy(update={"api_base": "http://10.0.0.2:8000/v1"})
    assert model_identity(other_server) != model_identity(served)
    assert model_identity(served.model_copy(update={"model": "llama-8b"})) != model_identity(served)

    hub = TeacherConfig(name="hub", backend="vllm", model="org/some-model")
    assert model_identity(hub) == {"backend": "vllm", "model": "org/some-model"}

    local = TeacherConfig(name="local", model=str(tiny_model_dir))
    assert model_identity(local) == {"backend": "transformers", "weights": weights_digest(tiny_model_dir)}
    assert model_identity(local.model_copy(update={"backend": "vllm"})) != model_identity(local)

    embedded = TeacherConfig(name="europe", model="embedded:europe")
    with pytest.raises(ValueError, match="model_path"):
        model_identity(embedded)
    resolved = with_model_path(embedded, tiny_model_dir)
    assert resolved.model == str(tiny_model_dir) and not resolved.embedded
    assert model_identity(embedded, tiny_model_dir) == model_identity(local)


def test_unresolved_embedded_teacher_is_refused_by_the_runner(tmp_path):
    from .fakes import EchoBackend

    cfg = TeacherConfig(name="europe", model="embedded:europe")
    with pytest.raises(ValueError, match="embedded"):
        generate_completions(make_prompts(1), [(cfg, EchoBackend("europe"))], 1, tmp_path, "r", progress=False)


def test_a_serve_teacher_identity_names_the_served_weights(tmp_path):
    from factory.generation.registry import served_identity
    from factory.ids import completion_id

    folders = []
    for name, weights in (("a", b"one"), ("b", b"two")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)
        folders.append(folder)
    t = TeacherConfig(name="t", backend="openai", model="smol", api_base="serve:smol")
    ids = {completion_id("p", "t", t.sampling.key(), 0, model=model_identity(t.model_copy(update={"served": served_identity(f)})))
           for f in folders}  # fmt: skip
    assert len(ids) == 2  # another checkpoint behind serve:smol answers again
    assert model_identity(t.model_copy(update={"served": served_identity(folders[0])}))["served"] == weights_digest(folders[0])
    assert served_identity("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "served" not in model_identity(t)  # ids of other openai teachers are unchanged
