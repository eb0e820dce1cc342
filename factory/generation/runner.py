"""Resumable, batched generation over a teacher pool.

Reads: prompts [prompt_id, language, text]. Writes: GENERATIONS rows (factory/schemas.py)
plus `model` (JSON of the model identity that generated the row), and a quarantine
frame [row_key, reason, payload].

Every batch of prompts a teacher answers is written as one Parquet shard, atomically
(temp file, then `os.replace`), into `shard_dir`. On start, the completion ids
already in the shards are skipped, so a killed run resumes and generates only
what is missing. A completion id includes the teacher's model identity
(`registry.model_identity`: the weights' content hash, or the served model and
api_base), so a teacher whose model changed is answered again in full and its old
rows are not returned (they stay in the shards, where a switch back finds them). When a batch
raises, the prompts the backend's error reports as answered are kept (never asked again), the
failed ones are asked again up to `retries` times (one by one when the error does not say which
prompt failed), except failures that cannot succeed (an HTTP 400); a prompt that still fails is
quarantined for that teacher with the backend's reason, and every other answer is kept.
One run per `shard_dir` at a time (give each partition its own): a starting run
clears temp files it finds there.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import polars as pl
from pydantic import Field

from factory.generation.base import Completion, GenerationBackend, GenerationError, retryable
from factory.generation.registry import TeacherConfig, model_identity
from factory.ids import completion_id
from factory.settings import Engine, Strict
from warehouse.home import open_work_dir
from warehouse.schemas import GENERATIONS, conform, empty, rejected, rejected_frame

log = logging.getLogger(__name__)
GENERATION_EXTRA = {"model": pl.String}  # JSON of registry.model_identity; null in shards of older runs


def read_shards(shard_dir: Path) -> pl.DataFrame:
    """Every finished shard in `shard_dir` (temp files of a killed run are ignored), deduplicated."""
    schema = {**GENERATIONS, **GENERATION_EXTRA}
    frames = []
    for path in sorted(Path(shard_dir).glob("*.parquet")):
        try:
            df = pl.read_parquet(path, glob=False)
            missing = [pl.lit(None, dtype=t).alias(c) for c, t in GENERATION_EXTRA.items() if c not in df.columns]
            frames.append(conform(df.with_columns(missing), schema).select(list(schema)))
        except Exception as exc:  # an unreadable shard is regenerated, not trusted
            log.warning("ignoring unreadable shard %s: %s", path, exc)
    if not frames:
        return empty(schema)
    return pl.concat(frames).unique("completion_id", keep="first", maintain_order=True)


def _write_shard(rows: list[dict], shard_dir: Path, teacher: str) -> Path:
    df = conform(pl.DataFrame(rows, schema={**GENERATIONS, **GENERATION_EXTRA}), GENERATIONS)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in teacher)
    final = shard_dir / f"{safe}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = shard_dir / f".{final.name}.tmp"
    df.write_parquet(tmp)
    os.replace(tmp, final)
    return final


def _rows(
    prompt: dict,
    cfg: TeacherConfig,
    model: str,
    completions: list[Completion],
    ids: list[str],
    wanted: set[str],
    run_id: str,
) -> list[dict]:
    sampling_json = json.dumps(cfg.sampling.key(), sort_keys=True)
    return [
        {
            "completion_id": cid,
            "prompt_id": prompt["prompt_id"],
            "language": prompt["language"],
            "teacher": cfg.name,
            "backend": cfg.backend,
            "sample_index": i,
            "sampling": sampling_json,
            "text": c.text,
            "n_tokens": c.n_tokens,
            "finish_reason": c.finish_reason,
            "seconds": c.seconds,
            "run_id": run_id,
            "model": model,
        }
        for i, (c, cid) in enumerate(zip(completions, ids, strict=True))
        if cid in wanted
    ]


def _generate_checked(backend: GenerationBackend, prompts: list[dict], cfg: TeacherConfig, k: int):
    convs = [[{"role": "user", "content": p["text"]}] for p in prompts]
    out = backend.generate(convs, cfg.sampling, n=k)
    if len(out) != len(prompts) or any(len(cs) != k for cs in out):
        raise RuntimeError(f"backend returned {[len(cs) for cs in out]} completions for {len(prompts)} prompts x {k}")
    return out


def _ask(
    backend: GenerationBackend, prompts: list[dict], cfg: TeacherConfig, k: int
) -> tuple[list[list[Completion] | str], bool]:
    """One generate() call: (per prompt, its k completions or why it failed; whether the failures
    are known per prompt). A GenerationError's `rows` say which prompts were answered: those are
    kept. Any other error fails the whole call, and says nothing about which prompt caused it."""
    try:
        return _generate_checked(backend, prompts, cfg, k), True
    except Exception as exc:
        error = exc
    rows = error.rows if isinstance(error, GenerationError) else None
    if rows is not None and len(rows) == len(prompts):
        return [r if isinstance(r, str) or len(r) == k else f"backend returned {len(r)} completions, not {k}"
                for r in rows], True  # fmt: skip
    reason = str(error) if isinstance(error, GenerationError) else f"{type(error).__name__}: {error}"
    return [reason] * len(prompts), len(prompts) == 1


def _batch_with_retries(
    backend: GenerationBackend, batch: list[dict], cfg: TeacherConfig, k: int, retries: int
) -> tuple[list[tuple[dict, list[Completion]]], list[tuple[dict, str]]]:
    """(answered prompts, [(failed prompt, reason)]). The batch is asked at once; the prompts it answered are
    kept (also when the backend's error reports them as done), and each failed prompt is asked up to
    `retries` more times: together when the backend reported failures per prompt, else one by one
    (to isolate the prompt that breaks the batch). A failure the backend marks as not retryable
    (e.g. HTTP 400) is quarantined at once, with its reason."""
    outcome, per_row = _ask(backend, batch, cfg, k)
    asked = [1] * len(batch)
    for _ in range(max(0, retries)):
        again = [i for i, r in enumerate(outcome) if isinstance(r, str) and retryable(r)]
        if not again:
            break
        log.warning("teacher %s: %d of %d prompts failed (%s); asking them again",
                    cfg.name, len(again), len(batch), outcome[again[0]])  # fmt: skip
        if per_row:
            new, per_row = _ask(backend, [batch[i] for i in again], cfg, k)
        else:
            new = [_ask(backend, [batch[i]], cfg, k)[0][0] for i in again]
            per_row = True
        for i, r in zip(again, new, strict=True):
            outcome[i] = r
            asked[i] += 1
    answered, failed = [], []
    for prompt, r, n in zip(batch, outcome, asked, strict=True):
        if not isinstance(r, str):
            answered.append((prompt, r))
            continue
        why = "not retried: asking again cannot succeed" if not retryable(r) else f"asked {n} times"
        failed.append((prompt, f"teacher {cfg.name} failed ({why}): {r}"))
    return answered, failed


def plan_teacher(
    records: list[dict], cfg: TeacherConfig, k: int, done: set[str]
) -> tuple[list[tuple[dict, list[str], set[str]]], list[str], str]:
    """What `cfg` still has to answer: (todo [(prompt, its k completion ids, the ids not in `done`)],
    every requested id, the model identity JSON stored on its rows). Prompts with all k ids done are skipped."""
    key = cfg.sampling.key()
    model = model_identity(cfg)
    requested: list[str] = []
    todo = []
    for p in records:
        ids = [completion_id(p["prompt_id"], cfg.name, key, i, model=model) for i in range(k)]
        requested.extend(ids)
        wanted = {cid for cid in ids if cid not in done}
        if wanted:
            todo.append((p, ids, wanted))
    return todo, requested, json.dumps(model, sort_keys=True)


def answer_chunk(
    backend: GenerationBackend,
    cfg: TeacherConfig,
    model_json: str,
    chunk: list[tuple[dict, list[str], set[str]]],
    k: int,
    retries: int,
    shard_dir: Path,
    run_id: str,
) -> tuple[list[dict], list[dict]]:
    """Answer one batch of `plan_teacher`'s todo and write its wanted rows as one shard.
    Returns (rows written, quarantine rows: row_key "<prompt_id>|<teacher>", the payload naming the
    sample indices left missing)."""
    answered, failed = _batch_with_retries(backend, [p for p, _, _ in chunk], cfg, k, retries)
    plan = {p["prompt_id"]: (ids, wanted) for p, ids, wanted in chunk}
    rows = []
    for p, completions in answered:
        ids, wanted = plan[p["prompt_id"]]
        rows.extend(_rows(p, cfg, model_json, completions, ids, wanted, run_id))
    if rows:
        _write_shard(rows, shard_dir, cfg.name)
    quarantine = []
    for p, reason in failed:
        ids, wanted = plan[p["prompt_id"]]
        missing = [i for i, cid in enumerate(ids) if cid in wanted]
        payload = {**p, "teacher": cfg.name, "k": k, "missing_samples": missing}
        quarantine.append(rejected(f"{p['prompt_id']}|{cfg.name}", reason, payload))
    return rows, quarantine


def prompt_records(prompts: pl.DataFrame) -> list[dict]:
    """[{prompt_id, language, text}] of `prompts`, one per prompt_id, in order."""
    return prompts.select("prompt_id", "language", "text").unique("prompt_id", maintain_order=True).to_dicts()


def check_teacher_names(names: list[str]) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"teacher names must be unique (they are part of completion_id): {names}")


def collect_generations(shard_dir: Path, requested: list[str] | set[str]) -> pl.DataFrame:
    """The shards' rows of exactly the `requested` completion ids (resumed or new), one row each."""
    return read_shards(shard_dir).filter(pl.col("completion_id").is_in(list(requested)))


def generate_completions(
    prompts: pl.DataFrame,
    teachers: list[tuple[TeacherConfig, GenerationBackend]],
    k: int,
    shard_dir: Path,
    run_id: str,
    retries: int = 2,
    progress: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate `k` completions per prompt from every teacher, resuming from `shard_dir`.

    Returns (generations, quarantine). Generations holds exactly the requested
    completion ids that exist (resumed or new), one row each; quarantine holds a
    row per (prompt, teacher) (row_key "<prompt_id>|<teacher>", payload with `missing_samples`) that still failed after `retries` more attempts (or at once, when the
    backend says asking again cannot succeed), with the backend's reason.
    Each `cfg.model` must name what its backend loads (resolve embedded teachers with
    `registry.with_model_path`): its identity is part of every completion id.
    (factory.engines.ray_data runs the same plan and batches on a Ray cluster.)
    """
    from tqdm.auto import tqdm

    check_teacher_names([cfg.name for cfg, _ in teachers])
    shard_dir = open_work_dir(shard_dir)
    records = prompt_records(prompts)
    done = set(read_shards(shard_dir)["completion_id"].to_list())
    requested: set[str] = set()
    quarantine: list[dict] = []
    for cfg, backend in teachers:
        todo, ids, model_json = plan_teacher(records, cfg, k, done)
        requested.update(ids)
        size = max(1, cfg.batch_size)
        bar = tqdm(total=len(todo), desc=f"generate[{cfg.name}]", unit="prompt", disable=None if progress else True, leave=False)
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            rows, failed = answer_chunk(backend, cfg, model_json, chunk, k, retries, shard_dir, run_id)
            quarantine.extend(failed)
            done.update(r["completion_id"] for r in rows)
            bar.update(len(chunk))
        bar.close()
    return collect_generations(shard_dir, requested), rejected_frame(quarantine)


class GenerationSettings(Strict):
    k: int = Field(2, ge=1)  # samples per prompt per teacher
    retries: int = Field(2, ge=0)  # more attempts at a failed prompt before quarantine (not for e.g. HTTP 400)
    engine: Engine = "in_process"
