"""The embedded teacher pool: one tokenizer, a weak generalist `base`, one teacher per cluster.

Layout under `out_dir`:

    tokenizer/              byte-level BPE trained on every dialog text
    base/                   a few steps over all languages (the weak generalist)
    teachers/<cluster>/     fine-tuned from base on the cluster's languages + en/es/fr

Each folder holds a `build.json` (written last, so it marks a finished build)
with a hash of the config, the data and the parent's hash; a rerun with the same
inputs reuses the folder without retraining. The caller must pass TRAINING
dialogs only: held-out prompts must never reach the teachers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pydantic import Field

from factory.ids import content_hash
from factory.languages import CLUSTERS, LANGUAGES, own_languages
from factory.settings import Strict
from factory.sources.chatterbot import Dialog
from training import pretrain
from training.tiny import init_causal_lm, save_model, train_tokenizer


class EmbeddedPoolConfig(Strict):
    vocab_size: int = 4096
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    max_length: int = 128
    base_steps: int = 300
    teacher_steps: int = 150
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    max_dialogs_per_language: int = 400
    device: str = "auto"
    # torch threads while building (restored afterwards); 1 is fastest for ~1M-param models and
    # avoids a 10x slowdown from thread oversubscription on a shared 2-core box. None: torch's default.
    torch_threads: int | None = 1


def dialog_conversation(dialog: Dialog) -> list[dict[str, str]]:
    """The dialog as a chat: the prompt as the user turn, the first reference as the assistant reply."""
    conv = [{"role": "user", "content": dialog.prompt}]
    if dialog.references:
        conv.append({"role": "assistant", "content": dialog.references[0]})
    return conv


def cap_per_language(dialogs: list[Dialog], cap: int | None) -> list[Dialog]:
    """The first `cap` dialogs of each language, in input order."""
    counts: dict[str, int] = {}
    out = []
    for d in dialogs:
        if cap is None or counts.get(d.language, 0) < cap:
            counts[d.language] = counts.get(d.language, 0) + 1
            out.append(d)
    return out


def cluster_dialogs(dialogs: list[Dialog], cluster: str) -> list[Dialog]:
    """The dialogs a cluster's teacher trains on: its own languages plus the shared en/es/fr."""
    wanted = set(CLUSTERS[cluster])
    return [d for d in dialogs if d.language in wanted]


def _data_hash(dialogs: list[Dialog]) -> str:
    return content_hash([(d.language, d.prompt, d.references[:1]) for d in dialogs])


def _read_build(folder: Path, build_hash: str) -> dict | None:
    meta = folder / "build.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text(encoding="utf-8"))
    return info if info.get("hash") == build_hash else None


def _write_build(folder: Path, info: dict) -> None:
    tmp = folder / "build.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, folder / "build.json")


def _build_tokenizer(dialogs: list[Dialog], folder: Path, cfg: EmbeddedPoolConfig, build_hash: str):
    from transformers import AutoTokenizer

    info = _read_build(folder, build_hash)
    if info is not None:
        return AutoTokenizer.from_pretrained(folder), {**info, "reused": True}
    texts = [d.prompt for d in dialogs] + [r for d in dialogs for r in d.references]
    tok = train_tokenizer(texts, vocab_size=cfg.vocab_size, max_length=cfg.max_length)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    info = {"name": "embedded:tokenizer", "path": str(folder), "vocab_size": len(tok), "hash": build_hash}
    _write_build(folder, info)
    return tok, {**info, "reused": False}


def _train_model(
    name: str,
    stage: str,
    cluster: str | None,
    dialogs: list[Dialog],
    tokenizer,
    init_from: Path | None,
    folder: Path,
    cfg: EmbeddedPoolConfig,
    steps: int,
    seed: int,
    build_hash: str,
    progress: bool,
) -> dict:
    info = _read_build(folder, build_hash)
    if info is not None:
        return {**info, "reused": True}
    if init_from is None:
        model = init_causal_lm(tokenizer, seed=seed, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(init_from)
    convs = [dialog_conversation(d) for d in dialogs]
    metrics = pretrain.train_causal_lm(
        model, tokenizer, convs, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
        max_length=cfg.max_length, desc=name, device=cfg.device, progress=progress,
    )  # fmt: skip
    folder.parent.mkdir(parents=True, exist_ok=True)
    save_model(model.to("cpu"), tokenizer, folder)
    info = {
        "name": name,
        "stage": stage,
        "cluster": cluster,
        "languages": sorted({d.language for d in dialogs}),
        "path": str(folder),
        "config": cfg.model_dump(),
        "metrics": metrics,
        "hash": build_hash,
        "parent": str(init_from) if init_from else None,
    }
    _write_build(folder, info)
    return {**info, "reused": False}


def build_embedded_pool(
    dialogs: list[Dialog],
    out_dir: Path,
    cfg: EmbeddedPoolConfig | None = None,
    languages: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the embedded pool from TRAINING dialogs; returns build info.

    Returns {"tokenizer": info, "base": info, "teachers": {cluster: info}}; a model's
    info has name, stage, cluster, languages, path, config, metrics (final_loss,
    seconds, n_params, ...), hash and reused. Clusters with none of their own
    languages in the data get no teacher (a teacher that only saw en/es/fr would
    not be a specialist).
    """
    import torch

    cfg = cfg or EmbeddedPoolConfig()
    threads = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    try:
        return _build(dialogs, Path(out_dir), cfg, languages, progress)
    finally:
        torch.set_num_threads(threads)


def _build(
    dialogs: list[Dialog], out_dir: Path, cfg: EmbeddedPoolConfig, languages: list[str] | None, progress: bool
) -> dict:
    wanted = set(languages) if languages is not None else set(LANGUAGES)
    dialogs = cap_per_language([d for d in dialogs if d.language in wanted], cfg.max_dialogs_per_language)
    if not dialogs:
        raise ValueError("no dialogs in the requested languages")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_json = cfg.model_dump(exclude={"device", "torch_threads"})
    tok_hash = content_hash("tokenizer", cfg.vocab_size, cfg.max_length, _data_hash(dialogs))
    tokenizer, tok_info = _build_tokenizer(dialogs, out_dir / "tokenizer", cfg, tok_hash)
    base_json = {k: v for k, v in cfg_json.items() if k != "teacher_steps"}  # teacher-only settings keep the base
    base_hash = content_hash("base", base_json, tok_hash, _data_hash(dialogs))
    base = _train_model(
        "embedded:base", "base", None, dialogs, tokenizer, None, out_dir / "base", cfg,
        cfg.base_steps, cfg.seed, base_hash, progress,
    )  # fmt: skip
    teachers: dict[str, dict] = {}
    for i, cluster in enumerate(sorted(CLUSTERS)):
        data = cluster_dialogs(dialogs, cluster)
        if not any(d.language in own_languages(cluster) for d in data):
            continue
        t_hash = content_hash("teacher", cluster, cfg_json, base_hash, _data_hash(data))
        teachers[cluster] = _train_model(
            f"embedded:{cluster}", "teacher", cluster, data, tokenizer, out_dir / "base",
            out_dir / "teachers" / cluster, cfg, cfg.teacher_steps, cfg.seed + 1 + i, t_hash, progress,
        )  # fmt: skip
    return {"tokenizer": tok_info, "base": base, "teachers": teachers}


class ModelsConfig(Strict):
    """The embedded tiny models (tokenizer, base, one teacher per cluster), built locally."""

    embedded: EmbeddedPoolConfig = Field(default_factory=EmbeddedPoolConfig)
