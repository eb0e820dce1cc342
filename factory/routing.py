"""Data arbitrage: routing strategies that pick one completion per prompt.

Every strategy reads the same *scored* table (scores joined with generations) and
writes rows of the `selections` table, told apart by the `strategy` column, so the
strategies can be compared on the same prompts with SQL.

Reads (scored): prompt_id str, language str, completion_id str, teacher str,
    sample_index int, reward float (null = unscored), language_match bool.
    learned_routing also needs the prompt text: a `prompt_text` column in
    scored, or the `prompts` table [prompt_id, text] passed to `select`.
Writes (selections): prompt_id, language, strategy, completion_id, teacher,
    reward, margin, run_id (factory.schemas.SELECTIONS).
Writes (quarantine): row_key (prompt_id), reason, payload (JSON) for every
    prompt a strategy could not select, so rows in = selected + quarantined.

Which sample the non-reward strategies use: `fixed_routing`, `random_routing`,
`single_teacher` and `learned_routing` model "ask the chosen teacher once", so
they take that teacher's sample `RoutingConfig.sample_index` (0) and never look
at its other samples. The language filter applies to every strategy alike: if
that one sample is off-language (or unscored) the prompt is quarantined for the
strategy, as a production language filter would drop it.

`select` reads the needed columns of `scored` (a DataFrame, or a LazyFrame such
as `pl.scan_parquet(...)`, so the text column is never loaded) once, then runs
each strategy as a lazy plan. Memory grows with the rows passed in: call it per
language partition for large tables (benchmarks/bench_selection.py), with
`RoutingConfig.single_teacher` set from `best_mean_teacher` over all languages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from factory.languages import LANGUAGES, cluster_of
from factory.schemas import SELECTIONS, conform

if TYPE_CHECKING:
    from factory.router import Router

SCORED_COLUMNS = ("prompt_id", "language", "completion_id", "teacher", "sample_index", "reward", "language_match")
QUARANTINE_COLUMNS = {"row_key": pl.String, "reason": pl.String, "payload": pl.String}
_PICKED = ("prompt_id", "language", "completion_id", "teacher", "reward", "margin")


def _default_fixed_teachers() -> dict[str, str]:
    return {code: cluster_of(code) for code in LANGUAGES}


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require_language_match: bool = True  # off-language completions are never selected
    sample_index: int = 0  # the chosen teacher's sample used by the non-reward strategies
    fixed_teachers: dict[str, str] = Field(default_factory=_default_fixed_teachers)  # language -> teacher
    seed: int = 0  # random_routing
    single_teacher: str | None = None  # None: the teacher with the best macro-mean reward


Frame = pl.DataFrame | pl.LazyFrame
# A strategy returns (picked rows [_PICKED], unpicked prompts [prompt_id, language, teacher, reason]).
Strategy = Callable[[pl.LazyFrame, RoutingConfig, "Router | None", "pl.LazyFrame | None"], tuple[pl.LazyFrame, pl.LazyFrame]]


def _lazy(df: Frame) -> pl.LazyFrame:
    return df.lazy() if isinstance(df, pl.DataFrame) else df


def eligible(cfg: RoutingConfig) -> pl.Expr:
    """Rows a strategy may select: scored, and in the prompt's language when required."""
    ok = pl.col("reward").is_not_null() & pl.col("reward").is_finite()
    if cfg.require_language_match:
        ok = ok & pl.col("language_match").fill_null(False)
    return ok


def _ineligible_reason(cfg: RoutingConfig) -> pl.Expr:
    where = pl.format("teacher {}'s sample {}", pl.col("teacher"), pl.lit(cfg.sample_index))
    return (
        pl.when(pl.col("teacher").is_null())
        .then(pl.lit("no teacher assigned to the prompt"))
        .when(pl.col("completion_id").is_null())
        .then(pl.format("{} does not exist", where))
        .when(pl.col("reward").is_null() | ~pl.col("reward").is_finite())
        .then(pl.format("{} has no reward", where))
        .otherwise(pl.format("{} is not in the prompt's language", where))
    )


def ranked(scored: pl.LazyFrame, cfg: RoutingConfig) -> pl.LazyFrame:
    """Eligible rows ordered per prompt by reward (high first), ties by completion_id.

    Sorting once on a u64 hash of prompt_id and then taking first/last rows per group
    is several times faster than a per-group sort_by; the hash only orders the sort,
    grouping is on prompt_id itself, so a hash collision cannot merge two prompts.
    """
    return (
        scored.filter(eligible(cfg))
        .with_columns(pl.col("prompt_id").hash().alias("_pk"))
        .sort(["_pk", "reward", "completion_id"], descending=[False, True, False])
    )


def reward_routing(scored: pl.LazyFrame, cfg: RoutingConfig, router=None, prompts=None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Per prompt the highest-reward eligible completion (ties: smallest completion_id);
    margin = best minus runner-up reward over all eligible samples (0 with one)."""
    best = (
        ranked(scored, cfg)
        .group_by("prompt_id", maintain_order=True)
        .agg(
            pl.col("language", "completion_id", "teacher", "reward").first(),
            pl.col("reward").gather(1, null_on_oob=True).first().alias("_runner_up"),
        )
        .with_columns((pl.col("reward") - pl.col("_runner_up").fill_null(pl.col("reward"))).alias("margin"))
        .select(_PICKED)
    )
    missed = (
        _prompts_of(scored)
        .join(best.select("prompt_id"), on="prompt_id", how="anti")
        .with_columns(
            pl.lit(None, pl.String).alias("teacher"),
            pl.lit("no completion with a reward" + (" in the prompt's language" if cfg.require_language_match else "")).alias("reason"),
        )
    )
    return best, missed


def _prompts_of(scored: pl.LazyFrame) -> pl.LazyFrame:
    return scored.group_by("prompt_id").agg(pl.col("language").first())


def _take_teacher_sample(scored: pl.LazyFrame, choice: pl.LazyFrame, keys: list[str], cfg: RoutingConfig) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Select the chosen teacher's sample `cfg.sample_index` per prompt. `choice` maps `keys`
    (a subset of prompt_id / language, or none: one teacher for all) to a `teacher`; prompts
    whose chosen sample is missing or ineligible are returned as unpicked with the reason."""
    samples = scored.filter(pl.col("sample_index") == cfg.sample_index)
    # A semi-join against the small choice table filters the big one without building a hash of it.
    picked = (
        samples.join(choice, on=[*keys, "teacher"], how="semi")
        .filter(eligible(cfg))
        .group_by("prompt_id")
        .agg(
            pl.col("language", "teacher").first(),
            pl.col("completion_id").min(),
            pl.col("reward").min_by("completion_id"),  # duplicates (e.g. two scorers): smallest id wins
        )
        .with_columns(pl.lit(0.0).alias("margin"))
        .select(_PICKED)
    )
    missed = _prompts_of(scored).join(picked.select("prompt_id"), on="prompt_id", how="anti")
    missed = missed.join(choice, on=keys, how="left") if keys else missed.join(choice, how="cross")
    detail = samples.join(missed.select("prompt_id"), on="prompt_id", how="semi").select(
        "prompt_id", "teacher", "completion_id", "reward", "language_match"
    )
    missed = (
        missed.join(detail, on=["prompt_id", "teacher"], how="left")
        .with_columns(_ineligible_reason(cfg).alias("reason"))
        .group_by("prompt_id")
        .agg(pl.col("language", "teacher", "reason").first())
    )
    return picked, missed


def fixed_routing(scored: pl.LazyFrame, cfg: RoutingConfig, router=None, prompts=None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The teacher `cfg.fixed_teachers[language]` (default: the language's cluster teacher)."""
    table = pl.LazyFrame(
        {"language": list(cfg.fixed_teachers), "teacher": list(cfg.fixed_teachers.values())},
        schema={"language": pl.String, "teacher": pl.String},
    )
    return _take_teacher_sample(scored, table, ["language"], cfg)


def stable_index(keys: pl.Series, seed: int) -> pl.Series:
    """A 64-bit BLAKE2b hash of (seed, key): stable across processes and polars versions."""
    salt = f"{seed}:".encode()
    values = [int.from_bytes(hashlib.blake2b(salt + k.encode(), digest_size=8).digest(), "big") for k in keys]
    return pl.Series(keys.name, values, dtype=pl.UInt64)


def random_routing(scored: pl.LazyFrame, cfg: RoutingConfig, router=None, prompts=None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """A seeded random teacher of the pool (all teachers in `scored`, sorted), a function of
    seed + prompt_id only; if that teacher did not answer the prompt, the prompt is quarantined."""
    pool = sorted(scored.select(pl.col("teacher").unique()).collect()["teacher"].drop_nulls().to_list())
    ids = scored.select(pl.col("prompt_id").unique()).collect()["prompt_id"]
    pick = (stable_index(ids, cfg.seed) % len(pool)).cast(pl.Int64) if pool else pl.Series([], dtype=pl.Int64)
    choice = pl.DataFrame({"prompt_id": ids, "teacher": pl.Series(pool, dtype=pl.String).gather(pick)})
    return _take_teacher_sample(scored, choice.lazy(), ["prompt_id"], cfg)


def best_mean_teacher(scored: Frame) -> str:
    """The teacher with the best macro-mean reward: mean over languages of its per-language mean
    (so a large language does not decide the baseline alone); ties: the smallest name."""
    means = (
        _lazy(scored)
        .filter(pl.col("reward").is_not_null() & pl.col("reward").is_finite())
        .group_by("language", "teacher")
        .agg(pl.col("reward").mean())
        .group_by("teacher")
        .agg(pl.col("reward").mean())
        .sort(["reward", "teacher"], descending=[True, False])
        .collect()
    )
    if means.is_empty():
        raise ValueError("single_teacher: no scored completion to rank teachers by")
    return means["teacher"][0]


def single_teacher(scored: pl.LazyFrame, cfg: RoutingConfig, router=None, prompts=None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """One teacher for every prompt: `cfg.single_teacher`, else the best macro-mean reward teacher."""
    teacher = cfg.single_teacher or best_mean_teacher(scored)
    return _take_teacher_sample(scored, pl.LazyFrame({"teacher": [teacher]}, schema={"teacher": pl.String}), [], cfg)


def learned_routing(scored: pl.LazyFrame, cfg: RoutingConfig, router: Router | None = None, prompts=None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The teacher a trained `Router` predicts from the prompt text alone."""
    if router is None:
        raise ValueError("learned_routing needs a trained router (factory.router.train_router)")
    if "prompt_text" in scored.collect_schema().names():
        texts = scored.group_by("prompt_id").agg(pl.col("language", "prompt_text").first())
    elif prompts is not None:
        texts = _prompts_of(scored).join(prompts.select("prompt_id", pl.col("text").alias("prompt_text")), on="prompt_id", how="left")
    else:
        raise ValueError("learned_routing needs prompt texts: a prompt_text column in scored or the prompts table")
    frame = texts.collect()
    known = frame.filter(pl.col("prompt_text").is_not_null())
    choice = known.with_columns(pl.Series("teacher", router.predict(known["prompt_text"].to_list()), dtype=pl.String))
    picked, missed = _take_teacher_sample(scored, choice.lazy().select("prompt_id", "teacher"), ["prompt_id"], cfg)
    no_text = frame.filter(pl.col("prompt_text").is_null()).select(
        "prompt_id", "language", pl.lit(None, pl.String).alias("teacher"), pl.lit("prompt text not found").alias("reason")
    )
    return picked, pl.concat([missed, no_text.lazy()])


STRATEGIES: dict[str, Strategy] = {
    "reward_routing": reward_routing,
    "fixed_routing": fixed_routing,
    "random_routing": random_routing,
    "single_teacher": single_teacher,
    "learned_routing": learned_routing,
}


def select(
    scored: Frame,
    strategies: list[str],
    cfg: RoutingConfig | None = None,
    run_id: str = "",
    router: Router | None = None,
    prompts: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run `strategies` over `scored`; returns (selections per SELECTIONS, quarantine [row_key, reason, payload])."""
    cfg = cfg or RoutingConfig()
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown routing strategies {unknown}; known: {', '.join(STRATEGIES)}")
    names = _lazy(scored).collect_schema().names()
    missing = [c for c in SCORED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"scored table lacks columns: {', '.join(missing)}")
    # Read the needed columns once: every strategy scans them, and re-reading Parquet per plan costs more
    # than holding them (the completion text is never needed here).
    keep = [*SCORED_COLUMNS, *(["prompt_text"] if "prompt_text" in names else [])]
    lf = _lazy(scored).select(keep).collect(engine="streaming").lazy()
    counts = lf.group_by("prompt_id").agg(
        pl.len().alias("n_completions"),
        pl.col("reward").is_not_null().sum().alias("n_scored"),
        pl.col("language_match").fill_null(False).sum().alias("n_language_match"),
    )
    picked_frames, missed_frames = [], []
    prompts_lf = prompts.lazy() if prompts is not None else None
    for name in strategies:
        picked, missed = STRATEGIES[name](lf, cfg, router, prompts_lf)
        picked_frames.append(picked.with_columns(pl.lit(name).alias("strategy"), pl.lit(run_id).alias("run_id")))
        missed_frames.append(missed.with_columns(pl.lit(name).alias("strategy")))
    n = len(strategies)
    frames = pl.collect_all([*picked_frames, *missed_frames, counts], engine="streaming")
    selections = conform(pl.concat(frames[:n]), SELECTIONS).sort("strategy", "prompt_id")
    missed = pl.concat([f.select("prompt_id", "language", "teacher", "reason", "strategy") for f in frames[n : 2 * n]])
    quarantine = _quarantine(missed.join(frames[-1], on="prompt_id", how="left"))
    return selections, quarantine


def _quarantine(missed: pl.DataFrame) -> pl.DataFrame:
    if missed.is_empty():
        return pl.DataFrame(schema=QUARANTINE_COLUMNS)
    payload = ["prompt_id", "language", "strategy", "teacher", "n_completions", "n_scored", "n_language_match"]
    return missed.sort("strategy", "prompt_id").select(
        pl.col("prompt_id").alias("row_key"),
        pl.format("{}: {}", pl.col("strategy"), pl.col("reason")).alias("reason"),
        pl.struct(payload).struct.json_encode().alias("payload"),
    )


def routing_stats(selections: pl.DataFrame, strategy: str = "reward_routing") -> pl.DataFrame:
    """Per language x teacher: wins (prompts the teacher won under `strategy`) and share of the language's prompts."""
    rows = selections.filter(pl.col("strategy") == strategy)
    return (
        rows.group_by("language", "teacher")
        .agg(pl.len().alias("wins"), pl.col("reward").mean().alias("mean_reward"))
        .with_columns((pl.col("wins") / pl.col("wins").sum().over("language")).alias("share"))
        .sort(["language", "wins", "teacher"], descending=[False, True, False])
    )


def strategy_comparison(selections: pl.DataFrame, by_language: bool = False) -> pl.DataFrame:
    """Per strategy (x language): prompts selected, and the mean reward over the prompts that
    *every* strategy selected (n_shared), which is the fair comparison: each strategy's mean over
    its own prompts compares different prompt sets (strategies that take one sample drop the
    prompts whose sample is off-language). On shared prompts reward_routing is at least as high as
    any other strategy, prompt by prompt, since it takes the argmax of all eligible samples."""
    keys = ["strategy", "language"] if by_language else ["strategy"]
    n_strategies = selections["strategy"].n_unique()
    shared = (
        selections.group_by("prompt_id").agg(pl.col("strategy").n_unique().alias("n"))
        .filter(pl.col("n") == n_strategies).select("prompt_id")
    )
    on_shared = (
        selections.join(shared, on="prompt_id", how="semi")
        .group_by(keys).agg(pl.len().alias("n_shared"), pl.col("reward").mean().alias("mean_reward"))
    )
    return (
        selections.group_by(keys).agg(pl.len().alias("n_selected"))
        .join(on_shared, on=keys, how="left")
        .with_columns(pl.col("n_shared").fill_null(0))
        .sort([*keys[1:], "mean_reward", "strategy"], descending=[*([False] * (len(keys) - 1)), True, False], nulls_last=True)
    )
