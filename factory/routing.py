"""Data arbitrage: routing strategies that pick one completion per prompt.

Every strategy reads the same *scored* table (scores joined with generations) and
writes rows of the `selections` table, told apart by the `strategy` column, so the
strategies can be compared on the same prompts with SQL.

Reads (scored): prompt_id str, language str, completion_id str, teacher str,
    sample_index int, reward float (null = unscored), language_match bool.
    learned_routing also needs the prompt text: a `prompt_text` column in
    scored, or the `prompts` table [prompt_id, text] passed to `select`.
Writes (selections): prompt_id, language, strategy, completion_id, teacher,
    reward, margin, run_id (warehouse.schemas.SELECTIONS).
Writes (quarantine): row_key (prompt_id), reason, payload (JSON) for every
    prompt a strategy could not select, so rows in = selected + quarantined.

Which sample the non-reward strategies use: `fixed_routing`, `random_routing`,
`single_teacher` and `learned_routing` model "ask the chosen teacher once", so
they take that teacher's sample `RoutingConfig.sample_index` (0) and never look
at its other samples. The language filter applies to every strategy alike: if
that one sample is off-language (or unscored) the prompt is quarantined for the
strategy, as a production language filter would drop it.

How it runs: the scored table is a DuckDB view (`ScoredTable`) over a DataFrame
(through Arrow, not copied), a LazyFrame (its needed columns collected) or Parquet
files (read where they lie, so a whole table of 10M completions selects in one
call). One aggregate per prompt (`per_prompt`) gives the counts, the best eligible
row with the top two rewards, and every row of the asked sample packed into one
integer (row position, teacher, state); each strategy is then a vectorised pick
over that per-prompt table, and only the picked rows' completion_id and reward
are fetched. `select_with_candidates` adds best_worst's candidates (factory.pairs) to the same
aggregate and read, so selections and pairs take one pass. No Python runs per row: random_routing's seeded pick is MD5 computed by
DuckDB (factory.ids.seeded_index; BLAKE2b before 2026-12, see the migration note in
docs/bench/selection.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from factory.ids import seeded_index, sql_str
from factory.languages import LANGUAGES, cluster_of
from warehouse.schemas import SELECTIONS, conform, rejected_frame


class Router(Protocol):
    """What learned_routing needs of a router (factory.learned_router.Router): teachers from prompt texts."""

    def predict(self, texts: list[str]) -> list[str]: ...

SCORED_COLUMNS = ("prompt_id", "language", "completion_id", "teacher", "sample_index", "reward", "language_match")
_MISSED = ("prompt_id", "language", "teacher", "reason")
_NO_TEXT = "prompt text not found"


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
Source = pl.DataFrame | pl.LazyFrame | str | Path | Sequence[str | Path]  # Parquet: a file, a glob or a list


def eligible(cfg: RoutingConfig) -> pl.Expr:
    """Rows a strategy may select: scored, and in the prompt's language when required (as `eligible_sql`)."""
    ok = pl.col("reward").is_not_null() & pl.col("reward").is_finite()
    if cfg.require_language_match:
        ok = ok & pl.col("language_match").fill_null(False)
    return ok


def eligible_sql(cfg: RoutingConfig) -> str:
    """`eligible` as a DuckDB predicate over the scored view."""
    ok = "coalesce(isfinite(reward), false)"
    return ok + (" AND coalesce(language_match, false)" if cfg.require_language_match else "")


def parquet_files(source: str | Path | Sequence[str | Path]) -> list[str]:
    """The Parquet files a path, a glob or a list of them names, sorted within each glob."""
    items = [source] if isinstance(source, str | Path) else list(source)
    files: list[str] = []
    for item in items:
        text = str(item)
        matched = sorted(str(p) for p in Path(text).parent.glob(Path(text).name)) if any(c in Path(text).name for c in "*?[") else [text]
        files += matched
    if not files:
        raise ValueError(f"no Parquet files match {source!r}")
    return files


# A fetched column averaging more bytes than this a value (texts) is read by a join, not by slices.
_LONG_BYTES = 64


class ScoredTable:
    """The scored table as the DuckDB view `scored`: the needed columns plus `_row`, each row's
    position, by which the rows a strategy picks are fetched once the per-prompt work is done.

    A DataFrame is read by DuckDB through Arrow without a copy; a LazyFrame's needed columns are
    collected first; Parquet files are read where they lie (when fetching, a slice of row groups at a
    time, or for long texts a join on the position), so past the per-prompt table only the picked
    rows are held."""

    def __init__(self, scored: Source, required: Sequence[str], optional: Sequence[str] = ()):
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET preserve_insertion_order = false")
        self.frame: pl.DataFrame | None = None
        self.files: list[str] = []
        if isinstance(scored, pl.DataFrame | pl.LazyFrame):
            names = scored.collect_schema().names()
        else:
            self.files = parquet_files(scored)
            names = [r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_str(self.files[0])})").fetchall()]
        missing = [c for c in required if c not in names]
        if missing:
            self.close()
            raise ValueError(f"scored table lacks columns: {', '.join(missing)}")
        self.columns = [*required, *(c for c in optional if c in names)]
        cols = ", ".join(f'"{c}"' for c in self.columns)
        if not self.files:
            frame = scored.select(self.columns)
            self.frame = frame.collect(engine="streaming") if isinstance(frame, pl.LazyFrame) else frame
            self.con.register("scored_arrow", self.frame.with_row_index("_row").to_arrow())
            view = f"SELECT {cols}, _row::BIGINT AS _row FROM scored_arrow"
        else:
            counts = dict(self.con.execute("SELECT file_name, num_rows FROM parquet_file_metadata(?)", [self.files]).fetchall())
            self.offsets = np.cumsum([0, *(counts[f] for f in self.files)])
            view = " UNION ALL ".join(
                f"SELECT {cols}, file_row_number + {int(off)} AS _row FROM read_parquet({sql_str(f)}, file_row_number = true)"
                for f, off in zip(self.files, self.offsets, strict=False)
            )
        self.view = view
        self.con.execute(f"CREATE TEMP VIEW scored AS {view}")

    def sql(self, query: str, **frames: pl.DataFrame) -> pl.DataFrame:
        """Run `query`; `frames` are visible to it by their names."""
        for name, frame in frames.items():
            self.con.register(name, frame.to_arrow())
        return self.con.sql(query).pl()

    def teachers(self) -> list[str]:
        """The teacher pool: every teacher in the table, sorted."""
        return sorted(t for (t,) in self.con.execute("SELECT DISTINCT teacher FROM scored WHERE teacher IS NOT NULL").fetchall())

    def fetch(self, rows: pl.Series, columns: Sequence[str]) -> pl.DataFrame:
        """`columns` of the rows at positions `rows`, in that order. Parquet is read a slice of whole
        row groups (about 1M rows) at a time, so a large text column is never held whole."""
        return self.fetch_many([(rows, columns)])[0]

    def fetch_many(self, requests: Sequence[tuple[pl.Series, Sequence[str]]]) -> list[pl.DataFrame]:
        """`fetch` for several (rows, columns) requests, reading each slice of the table once. From
        Parquet, a request for a column of long strings is a DuckDB join instead (`_fetch_joined`)."""
        if self.frame is not None:  # a gather across chunks is several times slower
            return [self.frame.select(columns).rechunk().gather(rows) for rows, columns in requests]
        long = self._long_columns()
        sliced = [i for i, (_, columns) in enumerate(requests) if not long.intersection(columns)]
        got = dict(zip(sliced, self._fetch_sliced([requests[i] for i in sliced]), strict=True))
        return [got[i] if i in got else self._fetch_joined(*requests[i]) for i in range(len(requests))]

    @cached_property
    def _metadata(self) -> list:
        """Each Parquet file's footer (pyarrow FileMetaData), read once for the fetch's plans."""
        import pyarrow.parquet as pq

        return [pq.ParquetFile(file).metadata for file in self.files]

    def _long_columns(self) -> set[str]:
        """Columns averaging over _LONG_BYTES a value, uncompressed, in the Parquet metadata."""
        size: dict[str, int] = {}
        rows = 0
        for meta in self._metadata:
            rows += meta.num_rows
            for g in range(meta.num_row_groups):
                for j in range(meta.num_columns):
                    column = meta.row_group(g).column(j)
                    size[column.path_in_schema] = size.get(column.path_in_schema, 0) + column.total_uncompressed_size
        return {c for c in self.columns if rows and size.get(c, 0) > _LONG_BYTES * rows}

    def _fetch_joined(self, rows: pl.Series, columns: Sequence[str]) -> pl.DataFrame:
        """`columns` of the rows at positions `rows` by a DuckDB join on the position: only those rows'
        strings are copied out. A gather from a slice read by polars would keep every string of the
        slice alive (its strings are views into the slice's buffers), i.e. about the whole column when
        the picked rows are spread over the table: with 1 KB texts, 3.4 GiB held for 1.2 GiB fetched."""
        import duckdb

        want = pl.DataFrame({"_want": rows.cast(pl.Int64), "_order": pl.int_range(len(rows), dtype=pl.Int64, eager=True)})
        con = duckdb.connect()
        try:
            con.execute("SET preserve_insertion_order = false")
            con.register("want", want.to_arrow())
            cols = ", ".join(f's."{c}"' for c in columns)
            got = con.sql(f"SELECT want._order, {cols} FROM ({self.view}) AS s JOIN want ON s._row = want._want").pl()
        finally:
            con.close()
        return got.sort("_order").drop("_order")

    def _fetch_sliced(self, requests: Sequence[tuple[pl.Series, Sequence[str]]]) -> list[pl.DataFrame]:
        """`fetch_many` by slices of whole row groups read by polars, gathered and put back in order."""
        if not requests:
            return []
        slices = self._slices()
        starts = np.asarray([s[0] for s in slices])
        plans = []
        for rows, _ in requests:
            want = rows.to_numpy()
            which = np.searchsorted(starts, want, side="right") - 1
            order = np.argsort(which.astype(np.int16 if len(slices) < 2**15 else np.int32), kind="stable")  # a radix sort for int16
            plans.append((want, order, np.searchsorted(which[order], np.arange(len(slices) + 1))))
        every = list(dict.fromkeys(c for _, columns in requests for c in columns))
        pieces: list[list[pl.DataFrame]] = [[] for _ in requests]
        for i, (start, file, local, length) in enumerate(slices):
            if not any(bounds[i + 1] > bounds[i] for _, _, bounds in plans):
                continue
            part = pl.scan_parquet(file).slice(local, length).select(every).collect().rechunk()
            for (want, order, bounds), (_, columns), out in zip(plans, requests, pieces, strict=True):
                idx = order[bounds[i] : bounds[i + 1]]
                if len(idx):
                    out.append(part.select(columns)[pl.Series(want[idx] - start)])
            del part
        results = []
        for k, ((_, order, _), (_, columns)) in enumerate(zip(plans, requests, strict=True)):
            got, pieces[k] = pieces[k], []  # one request's pieces at a time: at 10M rows they are hundreds of MB
            frame = pl.concat(got).rechunk() if got else pl.scan_parquet(self.files[0]).select(columns).head(0).collect()
            del got
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            results.append(frame[pl.Series(inverse)])
            del frame
        return results

    def _slices(self, rows: int = 1 << 20) -> list[tuple[int, str, int, int]]:
        """(global start, file, start in the file, length): runs of whole row groups of about `rows` rows."""
        out = []
        for file, offset, meta in zip(self.files, self.offsets[:-1], self._metadata, strict=True):
            local = length = 0
            for g in range(meta.num_row_groups):
                length += meta.row_group(g).num_rows
                if length >= rows or g == meta.num_row_groups - 1:
                    out.append((int(offset) + local, file, local, length))
                    local, length = local + length, 0
        return out

    def close(self) -> None:
        """Close the DuckDB connection, which returns its memory; `fetch` still works."""
        self.con.close()

    def __enter__(self) -> ScoredTable:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def per_prompt(
    table: ScoredTable, cfg: RoutingConfig, *, counts: bool = False, worst: bool = False, pool: list[str] | None = None,
    samples: bool = False,
) -> pl.DataFrame:
    """One row per prompt, sorted by prompt_id (canonical whatever order the scored rows come in: the
    pairs' order reaches DPO's seeded shuffle, docs/bench/selection.md). Columns: language, n_eligible, best_row (position of the
    eligible row with the highest reward; ties: smallest completion_id), top1 and top2 (the two
    highest eligible rewards, for the margin). worst adds worst_row (lowest reward; ties: largest
    completion_id, the last of the best-first order), bottom1 and bottom2; counts adds
    n_completions, n_scored and n_language_match. With the teacher `pool`: best_tix (the best row's
    teacher's place in the pool; len(pool): none; worst_tix likewise) and, with samples, `samples`: every row of sample
    cfg.sample_index packed into an integer (row position, teacher's place in the pool, state: 3
    eligible, 2 not in the prompt's language, 1 no reward)."""
    ok = eligible_sql(cfg)
    bits = _teacher_bits(pool)
    # A row is referred to by its position, with its teacher's place in the pool in the low bits.
    ref = f"((_row << {bits}) | coalesce(list_position({_sql_list(pool)}, teacher) - 1, {len(pool)}))" if pool is not None else "_row"
    aggs = ["min(language) AS language", f"count_if({ok})::BIGINT AS n_eligible", f"arg_max({ref}, reward) FILTER ({ok}) AS best", f"max(reward, 2) FILTER ({ok}) AS top"]
    out = ["prompt_id", "language", "n_eligible", "best", "top[1] AS top1", "top[2] AS top2"]
    if worst:
        aggs += [f"arg_min({ref}, reward) FILTER ({ok}) AS worst", f"min(reward, 2) FILTER ({ok}) AS bottom"]
        out += ["worst", "bottom[1] AS bottom1", "bottom[2] AS bottom2"]
    if counts:
        aggs += ["count(*) AS n_completions", "count(reward) AS n_scored", "count_if(coalesce(language_match, false))::BIGINT AS n_language_match"]
        out += ["n_completions", "n_scored", "n_language_match"]
    if pool is not None and samples:
        state = f"CASE WHEN {ok} THEN 3 WHEN coalesce(isfinite(reward), false) THEN 2 ELSE 1 END"
        aggs.append(f"list(({ref} << 2) | {state}) FILTER (sample_index = {int(cfg.sample_index)} AND teacher IS NOT NULL) AS samples")
        out.append("samples")
    # Aggregate and sort in one query: faster than materialising the aggregate first (a temp table
    # costs as much as the aggregate) and than sorting a frame by a string column in polars. The
    # group-by's own order varies with threads; a sort makes the same input give the same rows.
    per = table.sql(
        f"SELECT {', '.join(out)} FROM (SELECT prompt_id, {', '.join(aggs)} FROM scored GROUP BY prompt_id) "
        "ORDER BY prompt_id"
    )
    per = _break_ties(table, per, ok, ref, "best", "top", "arg_min")
    if worst:
        per = _break_ties(table, per, ok, ref, "worst", "bottom", "arg_max")
    refs = ["best", *(["worst"] if worst else [])]
    decoded = [(pl.col(c) // 2**bits).alias(f"{c}_row") for c in refs]
    if pool is not None:
        decoded += [(pl.col(c) % 2**bits).cast(pl.Int16).alias(f"{c}_tix") for c in refs]
    return per.with_columns(decoded).drop(refs)


def _teacher_bits(pool: list[str] | None) -> int:
    return 0 if pool is None else max(1, len(pool).bit_length())


def _sql_list(values: list[str] | None) -> str:
    return "[" + ", ".join(sql_str(v) for v in values or []) + "]"


def _break_ties(table: ScoredTable, per: pl.DataFrame, ok: str, ref: str, col: str, values: str, pick: str) -> pl.DataFrame:
    """arg_max/arg_min keep any one of several rows with the same reward; where the two extreme rewards
    are equal, pick among the tied rows by completion_id (`pick`), as a sort by (reward, completion_id) would."""
    tied = per.filter(pl.col(f"{values}2") == pl.col(f"{values}1")).select(pl.col("prompt_id").alias("tied_prompt"), pl.col(f"{values}1").alias("tied_reward"))
    if tied.is_empty():
        return per
    fixed = table.sql(
        f"SELECT prompt_id, {pick}({ref}, completion_id) AS _fixed FROM scored JOIN tied "
        f"ON prompt_id = tied_prompt AND reward = tied_reward WHERE {ok} GROUP BY prompt_id",
        tied=tied,
    )
    joined = per.join(fixed, on="prompt_id", how="left", maintain_order="left")
    return joined.with_columns(pl.coalesce("_fixed", col).alias(col)).drop("_fixed")


@dataclass
class Choice:
    """The teacher a strategy asks per prompt (one name per row of the per-prompt table; null: none,
    `unassigned` says why), whose sample cfg.sample_index it takes. teacher None: every sample of
    every teacher competes (reward_routing)."""

    teacher: pl.Series | None
    unassigned: str = "no teacher assigned to the prompt"


@dataclass
class Routing:
    """What strategies read: the per-prompt table, the teacher pool, and the strategy inputs."""

    per: pl.DataFrame
    cfg: RoutingConfig
    pool: list[str]
    router: Router | pl.DataFrame | None = None
    prompt_texts: pl.DataFrame | None = None  # [prompt_id, prompt_text], for learned_routing
    mean_teacher: str | None = None  # the best macro-mean reward teacher, for single_teacher


Strategy = Callable[[Routing], Choice]


def _reward_routing(r: Routing) -> Choice:
    """Per prompt the highest-reward eligible completion (ties: smallest completion_id);
    margin = best minus runner-up reward over all eligible samples (0 with one)."""
    return Choice(None)


def _fixed_routing(r: Routing) -> Choice:
    """The teacher `cfg.fixed_teachers[language]` (default: the language's cluster teacher)."""
    table = r.cfg.fixed_teachers
    return Choice(r.per["language"].replace_strict(list(table), list(table.values()), default=None, return_dtype=pl.String))


def _random_routing(r: Routing) -> Choice:
    """A seeded random teacher of the pool (all teachers in `scored`, sorted), a function of
    seed + prompt_id only (factory.ids.seeded_index: MD5); if that teacher did not answer the prompt,
    the prompt is quarantined."""
    if not r.pool:
        return Choice(pl.Series("teacher", [None] * r.per.height, dtype=pl.String))
    pick = (seeded_index(r.per["prompt_id"], r.cfg.seed) % len(r.pool)).cast(pl.Int64)
    return Choice(pl.Series("teacher", r.pool, dtype=pl.String).gather(pick))


def best_mean_teacher(scored: Source) -> str:
    """The teacher with the best macro-mean reward: mean over languages of its per-language mean
    (so a large language does not decide the baseline alone); ties: the smallest name."""
    with ScoredTable(scored, ("language", "teacher", "reward")) as table:
        return _best_mean_teacher(table)


def _best_mean_teacher(table: ScoredTable) -> str:
    rows = table.sql("SELECT language, teacher, avg(reward) AS m FROM scored WHERE coalesce(isfinite(reward), false) GROUP BY ALL")
    per_teacher: dict[str, list[tuple[str, float]]] = {}
    for language, teacher, mean in rows.iter_rows():
        per_teacher.setdefault(teacher, []).append((language or "", mean))
    # fsum over the languages in a fixed order: the same ranking whatever order the groups come in
    means = [(t, math.fsum(m for _, m in sorted(v)) / len(v)) for t, v in per_teacher.items() if t is not None]
    if not means:
        raise ValueError("single_teacher: no scored completion to rank teachers by")
    return min(means, key=lambda tm: (-tm[1], tm[0]))[0]


def _single_teacher(r: Routing) -> Choice:
    """One teacher for every prompt: `cfg.single_teacher`, else the best macro-mean reward teacher."""
    teacher = r.cfg.single_teacher or r.mean_teacher
    return Choice(pl.Series("teacher", [teacher] * r.per.height, dtype=pl.String))


def _learned_routing(r: Routing) -> Choice:
    """The teacher a trained `Router` predicts from the prompt text alone (or its predictions as a
    frame [prompt_id, teacher], joined by prompt_id)."""
    if isinstance(r.router, pl.DataFrame):
        routes = r.per.select("prompt_id").join(r.router.select("prompt_id", "teacher"), on="prompt_id", how="left", maintain_order="left")
        return Choice(routes["teacher"], "the router has no prediction for the prompt")
    texts = r.per.select("prompt_id").join(r.prompt_texts, on="prompt_id", how="left", maintain_order="left")["prompt_text"]  # type: ignore[arg-type]
    known = texts.is_not_null()
    teacher = pl.Series("teacher", [None] * r.per.height, dtype=pl.String)
    if known.any():
        predicted = pl.Series(r.router.predict(texts.filter(known).to_list()), dtype=pl.String)
        teacher = teacher.scatter(known.arg_true(), predicted)
    return Choice(teacher, _NO_TEXT)


STRATEGIES: dict[str, Strategy] = {
    "reward_routing": _reward_routing,
    "fixed_routing": _fixed_routing,
    "random_routing": _random_routing,
    "single_teacher": _single_teacher,
    "learned_routing": _learned_routing,
}


def _argmax_picks(r: Routing) -> tuple[pl.DataFrame, pl.DataFrame]:
    """reward_routing: picked [pidx, _row, tix, margin] and unpicked [pidx, teacher, reason] prompts."""
    per = r.per.with_row_index("pidx")
    picked = per.filter(pl.col("best_row").is_not_null()).select(
        "pidx", pl.col("best_row").alias("_row"), "best_tix", (pl.col("top1") - pl.col("top2").fill_null(pl.col("top1"))).alias("margin")
    )
    reason = "no completion with a reward" + (" in the prompt's language" if r.cfg.require_language_match else "")
    missed = per.filter(pl.col("best_row").is_null()).select("pidx", pl.lit(None, pl.String).alias("teacher"), pl.lit(reason).alias("reason"))
    return picked, missed


def _samples(per: pl.DataFrame, pool: list[str]) -> pl.DataFrame:
    """`per_prompt`'s samples unpacked: pidx (the prompt's row in per), _row, tix (the teacher's place
    in the pool), state (3 eligible, 2 not in the prompt's language, 1 no reward)."""
    bits, v = _teacher_bits(pool), pl.col("samples")
    return (
        per.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("pidx"), "samples")
        .explode("samples")
        .drop_nulls("samples")
        .select("pidx", (v // 2 ** (bits + 2)).alias("_row"), ((v // 4) % 2**bits).cast(pl.Int16).alias("tix"), (v % 4).cast(pl.Int8).alias("state"))
    )


def _one_sample_picks(r: Routing, table: ScoredTable, choice: Choice, samples: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The asked teacher's sample per prompt. Several eligible rows of it (e.g. two scorers): the smallest
    completion_id wins. A prompt without an eligible one is unpicked, with why read from that sample's
    first row in the table. `samples` is in prompt order, so repeats of a prompt are neighbours."""
    teacher = choice.teacher
    tix = pl.select(pl.when(teacher.is_not_null()).then(teacher.replace_strict(r.pool, range(len(r.pool)), default=-1, return_dtype=pl.Int16))).to_series()  # type: ignore[union-attr]
    asked = samples.filter(pl.col("tix") == tix.gather(samples["pidx"]))
    ok = asked.filter(pl.col("state") == 3).select("pidx", "_row")
    if (ok["pidx"].diff() == 0).any():
        ok = ok.with_columns(table.fetch(ok["_row"], ["completion_id"])).sort("pidx", "completion_id").unique("pidx", keep="first", maintain_order=True)
    if (asked["pidx"].diff() == 0).any():
        asked = asked.sort("pidx", "_row").unique("pidx", keep="first", maintain_order=True)
    state = np.zeros(r.per.height, dtype=np.int8)  # 0: the asked sample does not exist
    state[asked["pidx"].to_numpy()] = asked["state"].to_numpy()
    state[ok["pidx"].to_numpy()] = 3
    unpicked = np.flatnonzero(state != 3)
    missed = pl.DataFrame({"pidx": pl.Series(unpicked, dtype=pl.UInt32), "teacher": teacher.gather(unpicked), "state": state[unpicked]})  # type: ignore[union-attr]
    where = pl.format("teacher {}'s sample {}", pl.col("teacher"), pl.lit(r.cfg.sample_index))
    reason = (
        pl.when(pl.col("teacher").is_null()).then(pl.lit(choice.unassigned))
        .when(pl.col("state") == 0).then(pl.format("{} does not exist", where))
        .when(pl.col("state") == 1).then(pl.format("{} has no reward", where))
        .otherwise(pl.format("{} is not in the prompt's language", where))
    )
    picked = ok.select("pidx", "_row", tix.gather(ok["pidx"]).alias("best_tix"), pl.lit(None, pl.Float64).alias("margin"))  # 0.0, filled at the end
    return picked, missed.select("pidx", "teacher", reason.alias("reason"))


def select(
    scored: Source,
    strategies: list[str],
    cfg: RoutingConfig | None = None,
    run_id: str = "",
    router: Router | pl.DataFrame | None = None,
    prompts: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run `strategies` over `scored`; returns (selections per SELECTIONS, quarantine [row_key, reason, payload]),
    by strategy, then prompt_id. `router`: a trained Router, or its predictions
    [prompt_id, teacher] for learned_routing."""
    picked, missed, _ = _route(scored, strategies, cfg or RoutingConfig(), router, prompts)
    return _selections(picked, run_id), _quarantine(missed)


def select_with_candidates(
    scored: Source,
    strategies: list[str],
    cfg: RoutingConfig | None = None,
    run_id: str = "",
    router: Router | pl.DataFrame | None = None,
    prompts: pl.DataFrame | None = None,
    pairs_require_language_match: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """`select` and `pair_candidates` from one pass over `scored` (one aggregate, one read of the
    picked rows): (selections, quarantine, candidates). When the pairs' language rule differs from
    routing's, the eligible rows differ and the candidates take a second pass."""
    cfg = cfg or RoutingConfig()
    if pairs_require_language_match != cfg.require_language_match:
        sel, quarantine = select(scored, strategies, cfg, run_id, router, prompts)
        return sel, quarantine, pair_candidates(scored, pairs_require_language_match)
    picked, missed, candidates = _route(scored, strategies, cfg, router, prompts, candidates=True)
    return _selections(picked, run_id), _quarantine(missed), candidates  # type: ignore[return-value]


def pair_candidates(scored: Source, require_language_match: bool = True) -> pl.DataFrame:
    """Per prompt the best and worst eligible completion (factory.pairs.best_worst's candidates),
    every prompt of `scored` once, by prompt_id: PAIR_CANDIDATES (warehouse.schemas) [prompt_id, language,
    n_eligible, chosen_/rejected_ completion_id, teacher, reward and text (when scored has text)];
    the chosen_/rejected_ columns are null for a prompt without an eligible completion. Ties: the
    best is the smallest completion_id of the top reward, the worst the largest of the lowest.
    Reads scored [prompt_id, language, completion_id, teacher, reward, language_match, text?]."""
    return _route(scored, [], RoutingConfig(require_language_match=require_language_match), candidates=True)[2]  # type: ignore[return-value]


def _selections(picked: pl.DataFrame, run_id: str) -> pl.DataFrame:
    return conform(picked.with_columns(pl.lit(run_id).alias("run_id")), SELECTIONS)


PAIR_COLUMNS = ("prompt_id", "language", "completion_id", "teacher", "reward", "language_match")  # what pair candidates read (and text)


def _route(
    scored: Source, strategies: list[str], cfg: RoutingConfig, router=None, prompts=None, *, candidates: bool = False
) -> tuple[pl.DataFrame | None, pl.DataFrame | None, pl.DataFrame | None]:
    """(picked [prompt_id, language, strategy, completion_id, teacher, reward, margin], unpicked [prompt_id,
    language, teacher, reason, strategy, n_completions, n_scored, n_language_match], pair candidates),
    by strategy and prompt_id; the first two None without strategies, the third None unless `candidates`."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown routing strategies {unknown}; known: {', '.join(STRATEGIES)}")
    learned = "learned_routing" in strategies
    optional = [*(["prompt_text"] if learned else []), *(["text"] if candidates else [])]
    with ScoredTable(scored, SCORED_COLUMNS if strategies else PAIR_COLUMNS, optional) as table:
        if learned and router is None:
            raise ValueError("learned_routing needs a trained router (factory.learned_router.train_router)")
        texts = None
        if learned and not isinstance(router, pl.DataFrame):
            if "prompt_text" in table.columns:
                texts = table.sql("SELECT prompt_id, min(prompt_text) AS prompt_text FROM scored GROUP BY prompt_id")
            elif prompts is not None:
                texts = prompts.select("prompt_id", pl.col("text").alias("prompt_text"))
            else:
                raise ValueError("learned_routing needs prompt texts: a prompt_text column in scored or the prompts table")
        mean = _best_mean_teacher(table) if "single_teacher" in strategies and not cfg.single_teacher else None
        pool = table.teachers()
        one = any(s != "reward_routing" for s in strategies)
        per = per_prompt(table, cfg, counts=bool(strategies), worst=candidates, pool=pool, samples=one)
        table.close()  # the rest is polars over the per-prompt table, and fetching the picked rows
        samples = _samples(per, pool) if one else None
        r = Routing(per.drop("samples", strict=False), cfg, pool, router, texts, mean)
        del per
        names = sorted(strategies)
        picked, missed = [], []
        for i, name in enumerate(names):
            choice = STRATEGIES[name](r)
            p, m = _argmax_picks(r) if choice.teacher is None else _one_sample_picks(r, table, choice, samples)  # type: ignore[arg-type]
            picked.append(p.with_columns(pl.lit(i, pl.UInt8).alias("strategy")))
            missed.append(m.with_columns(pl.lit(name).alias("strategy")))
        del samples
        # One read of the table for the picked rows of every strategy and the pair candidates' two rows.
        requests: list[tuple[pl.Series, list[str]]] = []
        picks = pl.concat(picked) if picked else None
        del picked
        if picks is not None:
            requests.append((picks["_row"], ["completion_id", "reward"]))
            picks = picks.drop("_row")
        counts = ["n_completions", "n_scored", "n_language_match"] if strategies else []
        has = r.per["best_row"].is_not_null()
        if candidates:
            requests.append((pl.concat([r.per["best_row"].filter(has), r.per["worst_row"].filter(has)]),
                             ["completion_id", *(["text"] if "text" in table.columns else [])]))
        keep = ["prompt_id", "language", *counts, *(["n_eligible", "best_tix", "worst_tix", "top1", "bottom1"] if candidates else [])]
        per = r.per = r.per.select(keep)  # all that is still needed
        got = table.fetch_many(requests)
    teachers = pl.Series([*pool, None], dtype=pl.String)
    pairs = _candidates(per, has, teachers, got[-1]) if candidates else None
    if picks is None:
        return None, None, pairs
    rows = pl.DataFrame({
        "prompt_id": per["prompt_id"].gather(picks["pidx"]),
        "language": per["language"].gather(picks["pidx"]),
        "strategy": pl.Series(names, dtype=pl.String).gather(picks["strategy"]),
        "completion_id": got[0]["completion_id"],
        "teacher": teachers.gather(picks["best_tix"]),
        "reward": got[0]["reward"],
        "margin": picks["margin"].fill_null(0.0),
    })
    missed = pl.concat(missed)
    del picks, got
    unpicked = pl.concat([per.select("prompt_id", "language", *counts)[missed["pidx"]], missed.drop("pidx")], how="horizontal")
    return rows, unpicked.select(*_MISSED, "strategy", *counts), pairs


def _candidates(per: pl.DataFrame, has: pl.Series, teachers: pl.Series, got: pl.DataFrame) -> pl.DataFrame:
    """PAIR_CANDIDATES from the per-prompt table and the fetched [completion_id, text?] of the best
    rows, then the worst rows, of the prompts that `has` an eligible one (those prompts first)."""
    n, best = int(has.sum()), per.filter(has)

    def side(prefix: str, rows: pl.DataFrame, tix: str, reward: str) -> pl.DataFrame:
        cols = {"completion_id": rows["completion_id"], "teacher": teachers.gather(best[tix]), "reward": best[reward]}
        if "text" in rows.columns:
            cols["text"] = rows["text"]
        return pl.DataFrame({f"{prefix}{k}": v for k, v in cols.items()})

    return pl.concat([
        pl.concat([best.select("prompt_id", "language", "n_eligible"), side("chosen_", got[:n], "best_tix", "top1"),
                   side("rejected_", got[n:], "worst_tix", "bottom1")], how="horizontal"),
        per.filter(~has).select("prompt_id", "language", "n_eligible"),
    ], how="diagonal")


def reward_routing(scored: Source, cfg: RoutingConfig | None = None, router=None, prompts=None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """reward_routing alone: (picked [prompt_id, language, completion_id, teacher, reward, margin],
    unpicked [prompt_id, language, teacher, reason]) as LazyFrames."""
    picked, missed, _ = _route(scored, ["reward_routing"], cfg or RoutingConfig())
    return picked.drop("strategy").lazy(), missed.select(_MISSED).lazy()  # type: ignore[union-attr]


def _quarantine(missed: pl.DataFrame) -> pl.DataFrame:
    if missed.is_empty():
        return rejected_frame()
    payload = ["prompt_id", "language", "strategy", "teacher", "n_completions", "n_scored", "n_language_match"]
    return missed.select(
        pl.col("prompt_id").alias("row_key"),
        pl.format("{}: {}", pl.col("strategy"), pl.col("reason")).alias("reason"),
        pl.struct(payload).struct.json_encode().alias("payload"),
    )


def routing_stats(selections: Frame, strategy: str = "reward_routing") -> pl.DataFrame:
    """Per language x teacher: wins (prompts the teacher won under `strategy`) and share of the language's prompts."""
    return (
        selections.lazy()
        .filter(pl.col("strategy") == strategy)
        .group_by("language", "teacher")
        .agg(pl.len().alias("wins"), pl.col("reward").mean().alias("mean_reward"))
        .with_columns((pl.col("wins") / pl.col("wins").sum().over("language")).alias("share"))
        .sort(["language", "wins", "teacher"], descending=[False, True, False])
        .collect()
    )


def strategy_comparison(selections: Frame, by_language: bool = False) -> pl.DataFrame:
    """Per strategy (x language): prompts selected, and the mean reward over the prompts that
    *every* strategy selected (n_shared), which is the fair comparison: each strategy's mean over
    its own prompts compares different prompt sets (strategies that take one sample drop the
    prompts whose sample is off-language). On shared prompts reward_routing is at least as high as
    any other strategy, prompt by prompt, since it takes the argmax of all eligible samples."""
    keys = ["strategy", "language"] if by_language else ["strategy"]
    lf = selections.lazy()
    n_strategies = lf.select(pl.col("strategy").n_unique()).collect().item()
    shared = lf.group_by("prompt_id").agg(pl.col("strategy").n_unique().alias("n")).filter(pl.col("n") == n_strategies).select("prompt_id")
    on_shared = lf.join(shared, on="prompt_id", how="semi").group_by(keys).agg(pl.len().alias("n_shared"), pl.col("reward").mean().alias("mean_reward"))
    return (
        lf.group_by(keys).agg(pl.len().alias("n_selected"))
        .join(on_shared, on=keys, how="left")
        .with_columns(pl.col("n_shared").fill_null(0))
        .sort([*keys[1:], "mean_reward", "strategy"], descending=[*([False] * (len(keys) - 1)), True, False], nulls_last=True)
        .collect()
    )


def scored_frame(scores: pl.DataFrame, generations: pl.DataFrame, scorer: str = "arbiter") -> pl.DataFrame:
    """One scorer's scores joined with what routing and pairing need from generations (sample index, text)."""
    mine = scores.filter(pl.col("scorer") == scorer)
    return mine.join(generations.select("completion_id", "sample_index", "text"), on="completion_id", how="inner")
