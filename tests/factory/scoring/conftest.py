"""A tiny sequence-classification reward model (random weights) shared by the scoring tests."""

from __future__ import annotations

from pathlib import Path

import pytest

TEXTS = [
    "Hello, how are you today?",
    "I am fine, thank you very much.",
    "Hola, ¿cómo estás hoy?",
    "Estoy bien, muchas gracias.",
    "Bonjour, comment allez-vous aujourd'hui ?",
] * 4


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaForSequenceClassification

    from training.tiny import save_model, tiny_llama_config, train_tokenizer

    tok = train_tokenizer(TEXTS, vocab_size=300)
    config = tiny_llama_config(tok, hidden_size=32, layers=1, heads=2)
    config.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    return save_model(model, tok, tmp_path_factory.mktemp("rm") / "tiny_rm")
