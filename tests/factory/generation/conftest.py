from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def eos_model_dir(tmp_path_factory, tiny_lm):
    """A tiny model whose EOS logit is large about half the time, so answers stop at varied lengths."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.tiny import save_model

    folder = tiny_lm(seed=1, max_length=64, max_positions=128)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[tok.eos_token_id] = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0)) * 0.5
    return save_model(model, tok, tmp_path_factory.mktemp("tiny_eos") / "model")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and the CI box is shared; restore afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
