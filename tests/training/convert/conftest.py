"""Tiny GGUF files for the model-source tests, written with the `gguf` package from a tiny HF Llama.

`write_tiny_gguf` stores float32 tensors under llama.cpp's names (q/k rows permuted the way
llama.cpp's converter does), a byte-level BPE tokenizer, and optionally a chat template and a
pad token, so conversion can be checked exactly against the HF model it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEXTS = ["hello world, how are you?", "fine, thank you.", "hola, ¿qué tal?", "bonjour, ça va?"] * 8
TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def tiny_hf_llama(seed: int = 0, vocab_texts: list[str] = TEXTS, tied: bool = True):
    """(model, tokenizer): a 2-layer Llama (tied by default) with grouped-query attention, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tiny import train_tokenizer

    tok = train_tokenizer(vocab_texts, vocab_size=300, max_length=64)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tok


def _permute(w, n_head: int):
    """llama.cpp's rotary row order for q/k weights (transformers undoes it when loading a GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(
    path: Path, model, tok, chat_template: str | None = TEMPLATE, pad: bool = True, architecture: str = "llama"
) -> Path:
    import gguf

    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny-test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    merges = spec["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    if pad:
        w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"
    for hf, gg in names.items():
        t = sd[hf]
        if hf.endswith("q_proj.weight"):
            t = _permute(t, cfg.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        w.add_tensor(gg, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """(gguf path, HF model, tokenizer) of a tiny tied Llama with a chat template and a pad token."""
    model, tok = tiny_hf_llama()
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model, tok)
    return path, model, tok
