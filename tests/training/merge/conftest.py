"""Tiny Llama checkpoints for the merge tests: a base, two fine-tune-like variants, a sharded copy,
an untied (lm_head) pair, and incompatible models (other hidden size, other vocabulary)."""

from __future__ import annotations

from pathlib import Path

import pytest

TEXTS = [
    "hello world, how are you today?",
    "bonjour le monde, comment allez-vous?",
    "hola mundo, ¿cómo estás hoy?",
    "merging models tensor by tensor keeps memory low",
] * 4


def _tokenizer(extra: str = ""):
    from training.tiny import train_tokenizer

    return train_tokenizer(TEXTS + ([extra] * 4 if extra else []), vocab_size=320)


def _model(tokenizer, seed: int, tied: bool = True, hidden: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _finetune_like(model, base, seed: int, scale: float = 0.02):
    """Base weights plus a small random delta: a stand-in for a fine-tuned model."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, b in zip(model.parameters(), base.parameters(), strict=True):
            p.copy_(b + scale * torch.randn(b.shape, generator=gen))
    return model


def _save(model, tokenizer, path: Path, **kwargs) -> Path:
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge_models")
    tok = _tokenizer()
    base = _model(tok, seed=0)
    paths = {"base": _save(base, tok, root / "base")}
    for i, name in enumerate(["ft_a", "ft_b", "ft_c"]):
        ft = _finetune_like(_model(tok, seed=0), base, seed=10 + i)
        paths[name] = _save(ft, tok, root / name)
    # the same weights as ft_b, stored in several shards with an index json
    ft_b = _finetune_like(_model(tok, seed=0), base, seed=11)
    paths["ft_b_sharded"] = _save(ft_b, tok, root / "ft_b_sharded", max_shard_size="20KB")
    paths["far"] = _save(_model(tok, seed=1), tok, root / "far")  # independent init: slerp takes the arc
    untied_base = _model(tok, seed=2, tied=False)
    paths["untied_base"] = _save(untied_base, tok, root / "untied_base")
    paths["untied_ft"] = _save(
        _finetune_like(_model(tok, seed=2, tied=False), untied_base, seed=20), tok, root / "untied_ft"
    )
    paths["wide"] = _save(_model(tok, seed=3, hidden=48), tok, root / "wide")
    other_tok = _tokenizer("zzzz qqqq xxxx wwww unique words change the learned merges")
    paths["other_vocab"] = _save(_model(other_tok, seed=4), other_tok, root / "other_vocab")
    return paths
