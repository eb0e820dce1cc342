"""Turn a model reference into a folder transformers (and vLLM, TRL, the merge) can load.

`resolve_model(ref)` is the one call for every model role: a folder or hub name comes back as
given; a `gguf:` or `pkg:` GGUF source (see factory/model_sources.py) is converted once into
FACTORY_HOME/models/sources/<stem>-<key>/ and that folder comes back.

Conversion: transformers loads the GGUF (with the `gguf` package) dequantized to float32, but
refuses to save a GGUF-loaded model, so its weights are moved into a model built from the same
config (on the meta device: no second copy in memory) and saved as plain safetensors. Tied
embeddings stay tied (no lm_head.weight is written). The tokenizer keeps its chat template, gets
a pad token (eos) when it has none, pads on the left (generation) and learns the context length
as its model_max_length. The folder is written under a temporary name and renamed when complete,
under a file lock, so concurrent runs convert once and nobody sees half a folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from factory.model_sources import (
    SOURCE_RECORD,
    ConversionPlan,
    ModelSourceError,
    parse_model_ref,
    plan_conversion,
    read_source_record,
)

logger = logging.getLogger(__name__)

NOT_CAUSAL = {"t5", "umt5"}  # GGUF architectures transformers loads, but not as a causal LM


def resolve_model(ref: str, home: str | os.PathLike | None = None, chat_template: str | None = None) -> str:
    """The folder (or hub name) to load for model reference `ref`, converting a GGUF source on first use.

    `chat_template` is the fallback for a GGUF without one ("chatml" or a Jinja template)."""
    parsed = parse_model_ref(ref)
    if not parsed.needs_conversion:
        return parsed.location
    plan = plan_conversion(parsed, home, chat_template)
    if _is_converted(plan):
        return str(plan.folder)
    check_architecture(plan.header.architecture or "", plan.ref.raw)
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError(
            f"{plan.ref.raw!r}: transformers reads GGUF files with the gguf package: pip install gguf"
        )
    from filelock import FileLock

    plan.folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(plan.folder) + ".lock"):
        if not _is_converted(plan):  # another process may have finished while we waited
            convert_gguf(plan)
    return str(plan.folder)


def _is_converted(plan: ConversionPlan) -> bool:
    record = read_source_record(plan.folder)
    return record is not None and record.get("sha256") == plan.record["sha256"]


def _canonical(architecture: str) -> str:
    # transformers' own spellings: qwen2moe -> qwen2_moe, gpt-oss -> gpt_oss, minimax-m2 -> minimax_m2
    return re.sub(r"(\d)moe$", r"\1_moe", architecture.lower().replace("-", "_"))


def supported_gguf_architectures() -> set[str]:
    """GGUF architectures the installed transformers can load as a causal LM."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"} - NOT_CAUSAL


def check_architecture(architecture: str, ref: str) -> None:
    supported = supported_gguf_architectures()
    if architecture not in supported and _canonical(architecture) not in supported:
        import transformers

        raise ModelSourceError(
            f"{ref!r}: GGUF architecture {architecture!r} cannot be loaded as a causal LM by transformers "
            f"{transformers.__version__}; it loads: {', '.join(sorted(supported))}"
        )


def convert_gguf(plan: ConversionPlan) -> Path:
    """Write `plan.folder`: safetensors weights, config, generation config, tokenizer and source.json."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    folder, file = plan.folder, plan.file
    logger.info("converting %s (%.0f MB) into %s, once", file, file.stat().st_size / 1e6, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise ModelSourceError(f"{plan.ref.raw!r}: transformers cannot load {file}: {exc}") from exc
    model = _plain_copy(loaded)
    del loaded
    _fix_tokenizer(tokenizer, model, plan.chat_template)
    # A chat model samples: servers that take defaults from the folder (`transformers serve`) then
    # honour a request's temperature instead of decoding greedily. The project's backends set it per call.
    model.generation_config.do_sample = True

    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a killed conversion (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_tokenizer(tmp, plan.ref.raw)
        record = {
            **plan.record,
            "transformers_version": transformers.__version__,
            "dtype": "float32",
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", plan.ref.raw, record["seconds"])
    return folder


def _plain_copy(loaded):
    """A model of the same config without GGUF quantization state, sharing `loaded`'s tensors."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else it is written to config.json and loaders look for the GGUF
    with torch.device("meta"):  # no second float32 copy; non-persistent buffers are not saved anyway
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    return model


def _fix_tokenizer(tokenizer, model, fallback: str | None) -> None:
    """Chat template (fallback only where the GGUF has none), pad token, padding side and length."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = fallback
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding for generation (the TRL collators and the reward scorer pad on their own side);
    # save_pretrained only writes padding_side when it is among the init kwargs.
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and (tokenizer.model_max_length or 0) > limit:
        tokenizer.model_max_length = limit
    for cfg in (model.config, model.generation_config):
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = tokenizer.pad_token_id
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def _check_tokenizer(folder: Path, ref: str) -> None:
    """The saved tokenizer reloads with a chat template that renders, and eos/pad tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if not tok.chat_template:
        raise ModelSourceError(f"{ref!r}: the converted tokenizer lost its chat template")
    if tok.eos_token_id is None or tok.pad_token_id is None or tok.padding_side != "left":
        raise ModelSourceError(f"{ref!r}: the converted tokenizer lacks eos or pad tokens or left padding")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    if "hi" not in text:
        raise ModelSourceError(f"{ref!r}: the chat template does not render the user's message")
