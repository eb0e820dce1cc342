"""Stable content-hash ids: the one place ids are computed.

Rerunning the same work yields the same ids, which is what makes resume and
dedup work. Ids are 16 hex chars of BLAKE2b over a canonical JSON encoding.

An id names what produced the row as well as what it answers: a completion id
includes the model's identity (see `weights_digest` for local weights), a score
key the scorer's, so a changed model or reward model never resumes from the old
one's rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger(__name__)


def normalize_text(text: str) -> str:
    """NFC-normalise and strip surrounding whitespace (the identity of a prompt's text)."""
    return unicodedata.normalize("NFC", text).strip()


def content_hash(*parts: Any, size: int = 8) -> str:
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=size).hexdigest()


def prompt_id(language: str, text: str) -> str:
    return "p_" + content_hash("prompt", language, normalize_text(text))


def completion_id(
    prompt_id: str, teacher: str, sampling: dict[str, Any], sample_index: int, *, model: Any = None
) -> str:
    """`model` is the identity of what generated it (`registry.model_identity`). Leave it None only
    where `teacher` and `sampling` already name the producer; such ids equal those of before the
    model was part of the id."""
    if model is None:
        return "c_" + content_hash("completion", prompt_id, teacher, sampling, sample_index)
    return "c_" + content_hash("completion", prompt_id, teacher, sampling, sample_index, model)


def score_key(completion_id: str, text: str, scorer: Any) -> str:
    """What a cached reward is valid for: this completion's text, scored by this scorer identity."""
    return "s_" + content_hash("score", completion_id, text, scorer)


def pair_id(prompt_id: str, method: str, round: int, chosen_completion_id: str, rejected_completion_id: str) -> str:
    return "pr_" + content_hash("pair", prompt_id, method, round, chosen_completion_id, rejected_completion_id)


_PLAIN = r"^[A-Za-z0-9_.+\-]*$"  # strings whose canonical JSON is the string in quotes


def blake2b_digests(values: pl.Series, size: int = 8, batch: int = 1 << 16) -> bytes:
    """BLAKE2b (digest_size `size`) of every value of a String or Binary Series, concatenated:
    `size` bytes per value. The hashing is one C call per value; there is no per-row JSON, and the
    values become Python bytes `batch` at a time."""
    if values.null_count():
        raise ValueError("blake2b_digests: null values have no hash")
    blake2b, data = hashlib.blake2b, values.cast(pl.Binary)
    parts = (data.slice(start, batch).to_list() for start in range(0, len(data), batch))
    return b"".join(b"".join([blake2b(m, digest_size=size).digest() for m in part]) for part in parts)


def hex_digests(digests: bytes, size: int = 8) -> pl.Series:
    """`blake2b_digests` output as a String Series of lowercase hex, as `hexdigest()` writes it."""
    d = np.frombuffer(digests, dtype=np.uint8).reshape(-1, size)
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    out = np.empty((d.shape[0], 2 * size), dtype=np.uint8)
    out[:, 0::2], out[:, 1::2] = chars[d >> 4], chars[d & 15]
    return pl.Series(out.view(f"S{2 * size}").ravel()).cast(pl.String)


def pair_ids(prompt_ids: pl.Series, method: str, round: int, chosen: pl.Series, rejected: pl.Series) -> pl.Series:
    """`pair_id` over columns, the same ids. When every id is plain ASCII (as generated ids are), the
    canonical JSON is built by polars and only the hash runs per row; otherwise pair_id row by row."""
    frame = pl.DataFrame({"p": prompt_ids, "c": chosen, "r": rejected})
    plain = frame.select(pl.all().str.contains(_PLAIN).all()).row(0)
    if frame.height and all(plain) and re.fullmatch(_PLAIN, method):
        payload = frame.select(
            pl.concat_str([pl.lit('["pair","'), "p", pl.lit(f'","{method}",{int(round)},"'), "c", pl.lit('","'), "r", pl.lit('"]')])
        ).to_series()
        values = "pr_" + hex_digests(blake2b_digests(payload))
    else:
        values = pl.Series([pair_id(p, method, round, c, r) for p, c, r in frame.iter_rows()], dtype=pl.String)
    return values.alias("pair_id")


def checkpoint_id(stage: str, config: dict[str, Any], datasets: dict[str, Any], parents: list[str]) -> str:
    return "ck_" + content_hash("checkpoint", stage, config, datasets, sorted(parents))


def judgment_id(prompt_id: str, model_a: str, model_b: str, judge: str, order: str) -> str:
    return "j_" + content_hash("judgment", prompt_id, model_a, model_b, judge, order)


# -- model identity: a content hash of the files that make the model ----------------------

DIGEST_CACHE = ".factory-digests.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".model", ".tiktoken")
_MODEL_PREFIXES = ("tokenizer", "vocab", "merges", "chat_template", "special_tokens", "added_tokens")
_TRAINING_STATE = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")


def model_files(path: str | Path) -> list[Path]:
    """The files whose content decides what a model folder computes: weights, configs, tokenizer,
    chat template and custom code. Metrics, READMEs, trainer state and hidden files are left out,
    so writing a report next to the weights does not change the model's identity."""
    path = Path(path)
    if path.is_file():
        return [path]

    def defines_model(name: str) -> bool:
        if name.startswith(".") or name.startswith(_TRAINING_STATE):
            return False
        return name.endswith((*_WEIGHT_SUFFIXES, "config.json", ".py")) or name.startswith(_MODEL_PREFIXES)

    return sorted(p for p in path.iterdir() if p.is_file() and defines_model(p.name))


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(path: str | Path) -> str:
    """Content hash of a local model (folder or single file such as a GGUF), independent of where it lies.

    Every model file is hashed in full once; the per-file digests are cached in a small JSON next
    to the files, keyed by (size, mtime_ns, ctime_ns), so an unchanged 100 GB model is not re-read
    each run, and a rewritten file (new ctime even when size and mtime are forged) is. A folder
    that cannot be written to is simply re-hashed each time."""
    path = Path(path)
    files = model_files(path)
    if not files:
        raise ValueError(f"{path} holds no model files (weights, config, tokenizer)")
    cache_file = (path if path.is_dir() else path.parent) / DIGEST_CACHE
    try:
        cache = json.loads(cache_file.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        cache = {}
    fresh, changed = {}, False
    for f in files:
        st = f.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        hit = cache.get(f.name)
        if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("blake2b"), str):
            fresh[f.name] = hit
        else:
            fresh[f.name] = {"stamp": stamp, "blake2b": _file_digest(f)}
            changed = True
    if changed:
        kept = {k: v for k, v in cache.items() if k not in fresh and (cache_file.parent / k).exists()}
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"files": {**kept, **fresh}}, indent=1, sort_keys=True))
            os.replace(tmp, cache_file)
        except OSError as exc:  # a read-only model folder: correct, only slower next time
            log.debug("cannot cache model digests in %s: %s", cache_file, exc)
            tmp.unlink(missing_ok=True)
    return content_hash("weights", {name: entry["blake2b"] for name, entry in fresh.items()}, size=16)
