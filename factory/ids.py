"""Stable content-hash ids: the one place ids are computed.

Rerunning the same work yields the same ids, which is what makes resume and
dedup work. Ids are 16 hex chars of a hash over a canonical JSON encoding: BLAKE2b,
except pair ids and random_routing's seeded index, which DuckDB computes as MD5
(`pair_id_sql`, `seeded_index_sql`) so that selection and pairing need no per-row Python.

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
import unicodedata
from pathlib import Path
from typing import Any

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
    """One pair's id: `pair_ids` over one row (the same function, so every table's ids agree)."""
    return pair_ids(pl.Series([prompt_id]), method, round, pl.Series([chosen_completion_id]), pl.Series([rejected_completion_id]))[0]


def pair_id_sql(prompt_id: str, method: str, round: int, chosen: str, rejected: str) -> str:
    """The pair id as a DuckDB expression over the SQL expressions `prompt_id`, `chosen` and `rejected`
    (column names): "pr_" + the first 16 hex digits of MD5 over the canonical JSON
    ["pair", prompt_id, method, round, chosen, rejected] (DuckDB's json_array writes what
    json.dumps(ensure_ascii=False, separators=(",", ":")) writes). The one definition of pair ids:
    `pair_ids`, `pair_id` and the engine queries of factory.pairs all use it.

    MD5, not BLAKE2b as before 2026-12: the engine computes it, in parallel, with no per-row Python
    (docs/bench/selection.md, migration note)."""
    payload = f"json_array('pair', {prompt_id}, {sql_str(method)}, {int(round)}, {chosen}, {rejected})::VARCHAR"
    return f"('pr_' || left(md5({payload}), 16))"


def seeded_index_sql(key: str, seed: int) -> str:
    """A stable 64-bit index of (seed, key) as a DuckDB expression over the SQL expression `key`: the first
    8 bytes of MD5("<seed>:<key>"), big-endian (UBIGINT). random_routing's pick; see `seeded_index`."""
    return f"('0x' || left(md5({sql_str(f'{int(seed)}:')} || {key}), 16))::UBIGINT"


def pair_ids(prompt_ids: pl.Series, method: str, round: int, chosen: pl.Series, rejected: pl.Series) -> pl.Series:
    """`pair_id_sql` over columns, computed by DuckDB (a String Series named pair_id)."""
    frame = pl.DataFrame({"p": prompt_ids, "c": chosen, "r": rejected}, schema={"p": pl.String, "c": pl.String, "r": pl.String})
    if frame.select(pl.any_horizontal(pl.all().is_null()).any()).item():
        raise ValueError("pair_ids: null prompt or completion ids have no pair id")
    return _duckdb_column(frame, pair_id_sql("p", method, round, "c", "r")).cast(pl.String).alias("pair_id")


def seeded_index(keys: pl.Series, seed: int) -> pl.Series:
    """`seeded_index_sql` over a String Series (UInt64, named as `keys`)."""
    if keys.null_count():
        raise ValueError("seeded_index: null keys have no index")
    return _duckdb_column(pl.DataFrame({"k": keys.cast(pl.String)}), seeded_index_sql("k", seed)).cast(pl.UInt64).alias(keys.name)


def _duckdb_column(frame: pl.DataFrame, expr: str) -> pl.Series:
    import duckdb

    with duckdb.connect() as con:
        con.register("ids_input", frame.to_arrow())
        # row order is kept: one expression per row of a registered frame, no reordering operator
        return con.sql(f"SELECT {expr} AS v FROM ids_input").pl()["v"]


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


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
