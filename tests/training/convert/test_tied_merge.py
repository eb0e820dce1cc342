"""Merging checkpoints with tied word embeddings (SmolLM2's layout): the inputs store no lm_head,
and neither does the merge; it stays tied, loads with AutoModelForCausalLM and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.convert.conftest import tiny_hf_llama
from training.merge import merge_models
from training.merge.compat import IncompatibleModelsError
from training.merge.streaming import weight_files


def _perturbed(seed: int, base_seed: int = 0):
    import torch

    model, tok = tiny_hf_llama(seed=base_seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied: the embedding (= lm_head) is perturbed once
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model, tok


def _save_with_stored_head(model, tok, folder: Path) -> Path:
    """A tied checkpoint that nonetheless stores lm_head.weight (some writers do)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert "lm_head.weight" in tensors
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tied_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tied")
    paths = {}
    for name, seed in (("base", None), ("a", 1), ("b", 2)):
        model, tok = tiny_hf_llama() if seed is None else _perturbed(seed)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = root / name
    paths["c_stored_head"] = _save_with_stored_head(*_perturbed(3), root / "c_stored_head")
    untied, tok = tiny_hf_llama(tied=False)
    assert "lm_head.weight" in untied.state_dict()
    untied.save_pretrained(root / "untied")
    tok.save_pretrained(root / "untied")
    paths["untied"] = root / "untied"
    return paths


def _embed(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).model.embed_tokens.weight.detach()


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_tied_inputs_give_a_tied_merge_that_loads_and_generates(tied_models, tmp_path, method):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inputs = [tied_models["a"], tied_models["b"], tied_models["c_stored_head"]]
    assert "lm_head.weight" not in weight_files(inputs[0])
    base = tied_models["base"] if method == "ties" else None
    info = merge_models(inputs, method, tmp_path / "out", weights=[0.5, 0.3, 0.2], base=base, densities=None)
    assert info["tied_embeddings"] is True
    assert info["dropped_tied_head"] == [str(tied_models["c_stored_head"])]
    out = Path(info["output"])
    assert "lm_head.weight" not in weight_files(out)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    if method == "linear":
        expected = sum(w * _embed(f) for w, f in zip([0.5, 0.3, 0.2], inputs, strict=True))
        torch.testing.assert_close(merged.model.embed_tokens.weight.detach(), expected)
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["hello world"], return_tensors="pt")
    with torch.inference_mode():
        generated = merged.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        logits = merged(**enc).logits
    assert generated.shape[1] > enc["input_ids"].shape[1] and torch.isfinite(logits).all()


def test_tied_and_untied_models_are_not_merged(tied_models, tmp_path):
    with pytest.raises(IncompatibleModelsError, match="ties word embeddings"):
        merge_models([tied_models["a"], tied_models["untied"]], "linear", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert "lm_head.weight" in weight_files(tied_models["untied"])
