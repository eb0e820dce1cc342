"""Score every completion with every scorer, check language fidelity, standardise per language.

Reads generations (GENERATIONS columns) and prompts [prompt_id, text]; writes
scores (SCORES columns plus fidelity_penalty, selectable, scorer_model) and a
quarantine frame [row_key, reason, payload]. Counts reconcile per scorer:
len(generations) * len(scorers) == len(scores) + len(quarantine).
A quarantine row_key is "<completion_id>|<scorer>".

With a `cache_dir`, raw rewards of scorers that declare an `identity` (e.g. the
reward model's checkpoint hash) are kept there in Parquet shards, written
atomically per chunk, keyed by `ids.score_key(completion_id, text, identity)`:
an unchanged rerun (or a killed one) scores only what is missing, and a changed
checkpoint scores everything again. Scorers without an identity (LLM judges) are
always run. Fidelity and reward_z are recomputed every time (they are cheap and
depend on the whole partition).
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from factory.generation.registry import TeacherConfig
from factory.ids import score_key
from factory.scoring.base import RewardScorer
from factory.scoring.fidelity import FidelityConfig, apply_fidelity, detect_fidelity
from factory.scoring.llm_judge import LLMScorerConfig
from factory.settings import Engine, Strict
from warehouse.home import open_work_dir
from warehouse.schemas import SCORES, conform, rejected, rejected_frame

log = logging.getLogger(__name__)
# scorer_model: JSON of the scorer's identity (what produced the reward); null for scorers without one
SCORE_EXTRA = {"fidelity_penalty": pl.Float64, "selectable": pl.Boolean, "scorer_model": pl.String}
CACHE_COLUMNS = {"score_key": pl.String, "reward": pl.Float64, "truncated": pl.Boolean}
CACHE_CHUNK = 2048  # completions per scorer call, and per cache shard, when caching
Z_EPS = 1e-12  # a spread below this counts as zero variance


def _quarantine_row(row: dict[str, Any], scorer: str, reason: str, **extra: Any) -> dict[str, str]:
    return rejected(f"{row.get('completion_id')}|{scorer}", reason, {**row, "scorer": scorer, **extra})


def _reject_inputs(generations: pl.DataFrame, prompts: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[dict, str]]]:
    """Split off rows that cannot be scored: unknown prompt, failed generation, duplicate completion_id."""
    known = set(prompts["prompt_id"].to_list())
    seen: set[str] = set()
    keep, rejected = [], []
    for i, row in enumerate(generations.iter_rows(named=True)):
        if row["completion_id"] in seen:
            rejected.append((row, "duplicate completion_id (first occurrence kept)"))
        elif row["prompt_id"] not in known:
            rejected.append((row, f"prompt_id {row['prompt_id']} not in prompts"))
        elif row.get("finish_reason") == "error":
            rejected.append((row, "generation failed (finish_reason=error): nothing to score"))
        elif row["text"] is None:
            rejected.append((row, "completion text is null"))
        else:
            seen.add(row["completion_id"])
            keep.append(i)
    return generations[keep], rejected


def add_reward_z(scores: pl.DataFrame) -> pl.DataFrame:
    """reward_z = reward standardised within (scorer, language), population std; 0.0 for n=1 or zero spread."""
    grp = ["scorer", "language"]
    mean = pl.col("reward").mean().over(grp)
    std = pl.col("reward").std(ddof=0).over(grp)
    return scores.with_columns(
        reward_z=pl.when(pl.len().over(grp) > 1, std > Z_EPS).then((pl.col("reward") - mean) / std).otherwise(0.0)
    )


def _score_one(scorer: RewardScorer, prompts: list, texts: list[str]) -> tuple[list, list[bool]]:
    if hasattr(scorer, "score_with_info"):
        rewards, truncated = scorer.score_with_info(prompts, texts)
    else:
        rewards, truncated = scorer.score(prompts, texts), [False] * len(texts)
    if len(rewards) != len(texts) or len(truncated) != len(texts):
        raise ValueError(f"scorer {scorer.name} returned {len(rewards)} rewards for {len(texts)} completions")
    return list(rewards), list(truncated)


def _read_cache(cache_dir: Path, keys: set[str]) -> dict[str, tuple[float, bool]]:
    """Cached (reward, truncated) for `keys`; unreadable shards are ignored (those rows are scored again)."""
    found: dict[str, tuple[float, bool]] = {}
    for path in sorted(cache_dir.glob("*.parquet")):
        try:
            df = pl.read_parquet(path, columns=list(CACHE_COLUMNS), glob=False)
        except Exception as exc:
            log.warning("ignoring unreadable score shard %s: %s", path, exc)
            continue
        for key, reward, truncated in df.filter(pl.col("score_key").is_in(list(keys))).iter_rows():
            found.setdefault(key, (reward, truncated))
    return found


def _write_cache(cache_dir: Path, rows: list[tuple[str, float, bool]]) -> None:
    final = cache_dir / f"{uuid.uuid4().hex[:16]}.parquet"
    tmp = cache_dir / f".{final.name}.tmp"
    pl.DataFrame(rows, schema=CACHE_COLUMNS, orient="row").write_parquet(tmp)
    os.replace(tmp, final)


def score_into_cache(
    scorer: RewardScorer, keys: list[str], messages: list, texts: list[str], cache_dir: Path
) -> dict[str, tuple[Any, bool]]:
    """Score (messages, texts) in CACHE_CHUNK chunks; each chunk's finite rewards are written to
    `cache_dir` under `keys` before the next is scored. Returns {key: (reward, truncated)} for all."""
    fresh: dict[str, tuple[Any, bool]] = {}
    for start in range(0, len(keys), CACHE_CHUNK):
        end = start + CACHE_CHUNK
        rewards, truncated = _score_one(scorer, messages[start:end], texts[start:end])
        chunk = dict(zip(keys[start:end], zip(rewards, truncated, strict=True), strict=True))
        finite = [(k, float(r), bool(t)) for k, (r, t) in chunk.items() if r is not None and math.isfinite(float(r))]
        if finite:  # None / non-finite are quarantined this run and retried by the next
            _write_cache(cache_dir, finite)
        fresh.update(chunk)
    return fresh


def uncached(
    generations: pl.DataFrame, prompts: pl.DataFrame, identity: Any, cache_dir: Path
) -> pl.DataFrame:
    """The scorable completions (as score_generations keeps them) whose reward under `identity` is not
    in `cache_dir`: [score_key, completion_id, prompt, text], `prompt` the user turn. What a cached
    scorer still has to score; factory.engines.ray_data scores it on a Ray cluster."""
    good, _ = _reject_inputs(generations, prompts)
    keys = [score_key(c, t, identity) for c, t in zip(good["completion_id"], good["text"], strict=True)]
    known = _read_cache(Path(cache_dir), set(keys))
    todo = good.select("completion_id", "prompt_id", "text").with_columns(score_key=pl.Series(keys, dtype=pl.String))
    todo = todo.filter(~pl.col("score_key").is_in(list(known)))
    texts = prompts.select("prompt_id", prompt=pl.col("text")).unique("prompt_id", keep="first")
    return todo.join(texts, on="prompt_id", how="left", maintain_order="left").select("score_key", "completion_id", "prompt", "text")


def _cached_score(
    scorer: RewardScorer, identity: Any, ids: list[str], messages: list, texts: list[str], cache_dir: Path
) -> tuple[list, list[bool]]:
    """Like `_score_one`, but only the completions not in `cache_dir` are scored; each chunk of
    finite rewards is written there before the next is scored, so a killed run keeps its work."""
    keys = [score_key(cid, text, identity) for cid, text in zip(ids, texts, strict=True)]
    known: dict[str, tuple[Any, bool]] = dict(_read_cache(cache_dir, set(keys)))
    todo = [i for i, key in enumerate(keys) if key not in known]
    log.info(
        "scorer %s: %d of %d completions cached, scoring %d", scorer.name, len(keys) - len(todo), len(keys), len(todo)
    )
    known.update(score_into_cache(scorer, [keys[i] for i in todo], [messages[i] for i in todo], [texts[i] for i in todo], cache_dir))
    return [known[key][0] for key in keys], [known[key][1] for key in keys]


def score_generations(
    generations: pl.DataFrame,
    prompts: pl.DataFrame,
    scorers: list[RewardScorer],
    fidelity: FidelityConfig,
    run_id: str,
    cache_dir: Path | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(scores, quarantine): one scores row per completion per scorer, or a quarantine row saying why not.
    With `cache_dir`, rewards of scorers with an `identity` are resumed from and saved to it (one
    writer per folder at a time: give each partition its own)."""
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ValueError(f"scorer names must be unique, got {names}")
    good, rejected = _reject_inputs(generations, prompts)
    quarantine = [_quarantine_row(row, s.name, reason) for row, reason in rejected for s in scorers]

    prompt_text = dict(zip(prompts["prompt_id"].to_list(), prompts["text"].to_list(), strict=True))
    messages = [[{"role": "user", "content": prompt_text[p]}] for p in good["prompt_id"].to_list()]
    texts = good["text"].to_list()
    base = pl.concat([good, detect_fidelity(good["language"].to_list(), texts, fidelity)], how="horizontal")

    if cache_dir is not None:
        cache_dir = open_work_dir(cache_dir)
    frames = []
    for scorer in scorers:
        identity = getattr(scorer, "identity", None)
        if cache_dir is not None and identity is not None:
            ids = good["completion_id"].to_list()
            rewards, truncated = _cached_score(scorer, identity, ids, messages, texts, cache_dir)
        else:
            rewards, truncated = _score_one(scorer, messages, texts)
        ok = []
        for i, (reward, row) in enumerate(zip(rewards, base.iter_rows(named=True), strict=True)):
            if reward is None:
                quarantine.append(
                    _quarantine_row(row, scorer.name, "scorer returned no score (e.g. unparseable judge answer)")
                )
            elif not math.isfinite(float(reward)):
                quarantine.append(
                    _quarantine_row(row, scorer.name, f"non-finite reward ({reward})", reward=str(reward))
                )
            else:
                ok.append(i)
        frames.append(
            base[ok].with_columns(
                scorer=pl.lit(scorer.name),
                reward=pl.Series([float(rewards[i]) for i in ok], dtype=pl.Float64),
                truncated=pl.Series([bool(truncated[i]) for i in ok], dtype=pl.Boolean),
                run_id=pl.lit(run_id),
                scorer_model=pl.lit(None if identity is None else json.dumps(identity, sort_keys=True), pl.String),
            )
        )
    scored = pl.concat(frames) if frames else pl.DataFrame()
    if scored.height == 0:
        scores = pl.DataFrame(schema={**SCORES, **SCORE_EXTRA})
    else:
        scores = conform(add_reward_z(apply_fidelity(scored, fidelity)), SCORES).select(*SCORES, *SCORE_EXTRA)
    return scores, rejected_frame(quarantine)


def teacher_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Per scorer x language x teacher: n, mean reward, mean reward_z, language_match rate (for asset metadata)."""
    return (
        scores.group_by("scorer", "language", "teacher")
        .agg(
            n=pl.len(),
            mean_reward=pl.col("reward").mean(),
            mean_reward_z=pl.col("reward_z").mean(),
            language_match_rate=pl.col("language_match").cast(pl.Float64).mean(),
        )
        .sort("scorer", "language", "teacher")
    )


class ScoringConfig(Strict):
    """The Arbiter always scores; an LLM judge can score too (its rows are kept alongside, under
    its own scorer name). Routing and pairs use `primary`: the Arbiter unless set otherwise."""

    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    llm_judge: LLMScorerConfig | None = None  # an extra absolute-score scorer through any backend
    llm_judge_model: TeacherConfig | None = None  # its backend (e.g. an OpenAI-compatible server)
    primary: Literal["arbiter", "llm_judge"] = "arbiter"
    engine: Engine = "in_process"  # ray: the reward model scores on Ray; an LLM judge stays in the step

    @model_validator(mode="after")
    def _judge(self):
        if (self.llm_judge is None) != (self.llm_judge_model is None):
            raise ValueError("scoring.llm_judge and scoring.llm_judge_model go together")
        if self.primary == "llm_judge" and self.llm_judge is None:
            raise ValueError("scoring.primary: llm_judge needs scoring.llm_judge")
        return self
