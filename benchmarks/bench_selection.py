"""Selection benchmark: all routing strategies + best_worst pairs against a bare DuckDB argmax group-by.

    .venv/bin/python benchmarks/bench_selection.py --scale 0.1     # 200k prompts x 5 teachers = 1M completions
    .venv/bin/python benchmarks/bench_selection.py                 # 2M prompts x 5 teachers = 10M completions
    .venv/bin/python benchmarks/bench_selection.py --impl all      # adds the pandas version
    .venv/bin/python benchmarks/bench_selection.py --scale 0.3 --text-bytes 1000   # distinct 1 KB texts: memory with long texts

A generator subprocess writes a synthetic scored table and its prompts to Parquet; then each
implementation runs in its own subprocesses (fresh interpreters, so `ru_maxrss` is their own peak),
one per stage as Dagster runs the `selections` and `preference_pairs` assets as separate steps:

- duckdb_argmax: the floor, one DuckDB statement: per prompt the completion_id with the highest
  reward (`arg_max` group-by over the Parquet file), fetched into polars.
- engine: what the assets run since 2026-12-01: `select_with_candidates(path, [reward, fixed,
  random, single_teacher])` (outputs sorted by prompt_id) makes the selections and the pair candidates in one pass
  over the scored table (the candidates are written to Parquet untimed, as the IO manager writes the
  `pair_candidates` side output); the pairs stage reads them back (timed) and runs
  `best_worst_pairs`.
- two_pass: this project's `select(path, ...)`, then `best_worst(path, prompts)` over the scored
  table again, sorted by prompt_id (what the one pass buys).
- before: the same two calls on the project as it was at `--before` (a git revision, by default
  6417232, the last with two passes), from a copy of its `factory/` package. A revision whose ids
  predate MD5 (no `factory.ids.pair_id_sql`) gets a hashlib reference of the MD5 ids patched in
  (`reference_seeded_index` / `reference_pair_ids` below), so its whole outputs must equal the
  engine's.
- sql: the same outputs as DuckDB SQL alone (one aggregate carrying the strings it needs, then the
  strategies, quarantine and pairs as SQL), a reference for what one engine query costs.
- pandas (--impl all): a straightforward pandas version of the same selections and pair ids.

Each worker first runs its work once on a 5,000-row table, so every figure is of a warm process.
Time covers reading the Parquet file through the returned frames (writing them, the IO manager's
work, is not timed; peak RSS includes it). The parent prints each row, the ratios to the bare
group-by (all from this one run), and whether each variant produced the same outputs as before:
digests of the whole selections, quarantine and pairs tables, order-insensitive (sorted row
hashes) and with row order, and the best_worst stats (pandas: of the selected completion ids and
the pair ids). --out appends it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["reward_routing", "fixed_routing", "random_routing", "single_teacher"]
TEACHERS = ["west_european", "east_european", "middle_eastern", "east_asian", "generalist"]
BEFORE = "6417232"  # the last commit with two passes (selections, then best_worst) and outputs sorted by prompt_id


def generate(folder: str, n_prompts: int, seed: int = 0, text_bytes: int = 0) -> None:
    import numpy as np
    import polars as pl

    from factory.languages import LANGUAGE_CODES

    rng = np.random.default_rng(seed)
    n_t = len(TEACHERS)
    n = n_prompts * n_t
    prompt_no = np.repeat(np.arange(n_prompts, dtype=np.uint64), n_t)
    pid_hash = rng.integers(0, 2**63, n_prompts, dtype=np.int64)
    langs = rng.integers(0, len(LANGUAGE_CODES), n_prompts)
    df = pl.DataFrame(
        {
            "prompt_id": pl.Series(pid_hash).cast(pl.String).gather(prompt_no.astype(np.int64)),
            "language": pl.Series(list(LANGUAGE_CODES)).gather(np.repeat(langs, n_t)),
            "completion_id": pl.Series(rng.integers(0, 2**63, n, dtype=np.int64)).cast(pl.String),
            "teacher": pl.Series(TEACHERS).gather(np.tile(np.arange(n_t), n_prompts)),
            "sample_index": pl.Series(np.zeros(n, dtype=np.int32)),
            "text": pl.Series(rng.integers(0, 40, n)).cast(pl.String),  # short: some identical best/worst texts
            "reward": rng.normal(0, 1, n),
            "language_match": rng.random(n) < 0.95,
        }
    ).with_columns(pl.col("reward").alias("reward_z"))
    # ids in the producers' format (factory.ids): "p_" / "c_" + 16 hex digits
    df = df.with_columns(
        _hex_ids("p_", df["prompt_id"].cast(pl.UInt64).to_numpy()).alias("prompt_id"),
        _hex_ids("c_", df["completion_id"].cast(pl.UInt64).to_numpy()).alias("completion_id"),
    )
    if text_bytes:  # long texts, distinct as completions are (no identical pairs then): filler + completion_id + the short text
        df = df.with_columns(pl.concat_str(pl.lit(("lorem ipsum " * (text_bytes // 12 + 1))[:text_bytes]), "completion_id", "text").alias("text"))
    # long texts: the warehouse's row groups (polars' default), as the slices that fetching reads follow them
    df.write_parquet(Path(folder) / "scored.parquet", **({} if text_bytes else {"row_group_size": 1_000_000}))
    prompts = df.select("prompt_id").unique(maintain_order=True).with_columns(pl.format("prompt {}", "prompt_id").alias("text"))
    prompts.write_parquet(Path(folder) / "prompts.parquet")
    warm = Path(folder) / "warmup"  # each worker runs its work on this first: every figure is of a warm process
    warm.mkdir()
    df.head(5_000).write_parquet(warm / "scored.parquet")
    prompts.head(1_000).write_parquet(warm / "prompts.parquet")


def _hex_ids(prefix: str, values):
    """`prefix` + 16 lower-case hex digits of each uint64, vectorised (a String Series)."""
    import numpy as np
    import polars as pl

    pairs = np.array([f"{i:02x}".encode() for i in range(256)]).view(np.uint16)  # byte -> its two hex digits
    digits = pairs[np.ascontiguousarray(values.astype(">u8")).view(np.uint8).reshape(-1, 8)]
    out = np.empty((len(values), len(prefix) + 16), dtype=np.uint8)
    out[:, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    out[:, len(prefix) :] = digits.view(np.uint8).reshape(-1, 16)
    return pl.Series(out.view(f"S{len(prefix) + 16}").ravel()).cast(pl.String)


def _splitmix_seconds(out: Path) -> float:
    """What ids from a splitmix64 mix of the parsed 64-bit ids (numpy, wrap-around uint64) would cost
    on the same inputs as `_id_seconds`: a prototype for comparison, not the project's ids."""
    import numpy as np
    import polars as pl

    m = np.uint64

    def mix(z):
        z = (z ^ (z >> m(30))) * m(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> m(27))) * m(0x94D049BB133111EB)
        return z ^ (z >> m(31))

    def parse(ids):
        return ids.str.slice(2).str.to_integer(base=16, dtype=pl.UInt64).to_numpy()

    sel = pl.read_parquet(out.parent / "prompts.parquet", columns=["prompt_id"])
    pairs = pl.read_parquet(out / "pairs.parquet", columns=["prompt_id", "chosen_completion_id", "rejected_completion_id"])
    t = time.perf_counter()
    with np.errstate(over="ignore"):
        mix(parse(sel["prompt_id"]) ^ m(0x9E3779B97F4A7C15))  # random_routing's index
        h = mix(parse(pairs["prompt_id"]) ^ m(0x2545F4914F6CDD1D))  # a constant per (method, round)
        h = mix(mix(h ^ parse(pairs["chosen_completion_id"])) ^ parse(pairs["rejected_completion_id"]))
        _hex_ids("pr_", h)
    return time.perf_counter() - t


def _digest(values) -> str:
    return hashlib.blake2b("\n".join(sorted(values)).encode(), digest_size=8).hexdigest()


def _frame_digest(path: Path, ordered: bool = True) -> str:
    """A digest of a whole table, row order included unless `ordered` is false (then the digest of
    its sorted row hashes: the same rows in any order give the same digest). Row hashes are
    comparable within one polars version."""
    import numpy as np
    import polars as pl

    df = pl.read_parquet(path)
    rows = df.hash_rows(seed=0).to_numpy()
    rows = rows if ordered else np.sort(rows)
    return hashlib.blake2b(rows.tobytes() + str(df.schema).encode(), digest_size=8).hexdigest()


def _peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_duckdb_argmax(folder: str) -> dict:
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect()
    path = str(Path(folder) / "scored.parquet")
    best = con.sql(f"SELECT prompt_id, arg_max(completion_id, reward) AS completion_id FROM read_parquet('{path}') GROUP BY prompt_id").pl()
    seconds, peak = time.perf_counter() - t0, _peak_mib()
    return {"seconds": seconds, "peak_rss_mib": peak, "stages": {}, "counts": {"prompts": best.height}}


def reference_seeded_index(keys, seed: int):
    """The new random_routing index, re-implemented with hashlib: the first 8 bytes of MD5("<seed>:<key>"), big-endian."""
    import numpy as np
    import polars as pl

    digests = b"".join(hashlib.md5(f"{seed}:{k}".encode()).digest()[:8] for k in keys.to_list())
    return pl.Series(keys.name, np.frombuffer(digests, dtype=">u8").astype(np.uint64), dtype=pl.UInt64)


def reference_pair_ids(prompt_ids, method: str, round: int, chosen, rejected):
    """The new pair ids, re-implemented with hashlib: "pr_" + 16 hex digits of MD5 of the canonical JSON."""
    import polars as pl

    def one(p: str, c: str, r: str) -> str:
        payload = json.dumps(["pair", p, method, int(round), c, r], ensure_ascii=False, separators=(",", ":"))
        return "pr_" + hashlib.md5(payload.encode()).hexdigest()[:16]

    rows = zip(prompt_ids.to_list(), chosen.to_list(), rejected.to_list(), strict=True)
    return pl.Series("pair_id", [one(p, c, r) for p, c, r in rows], dtype=pl.String)


VARIANTS = {"engine": True, "two_pass": False}  # name: one pass for selections and pair candidates
PROJECT = [*VARIANTS, "before"]


def run_project(folder: str, stage: str, variant: str = "engine") -> dict:
    """One stage as its asset runs it, in its own process (Dagster runs the selections and the
    preference_pairs assets as separate steps): `select` (4 strategies) or `best_worst`.

    Variants of this project (VARIANTS): one pass (`select_with_candidates` writes the pair candidates
    beside the selections, untimed like every write; the pairs stage reads them back, timed, and
    builds the pairs with `best_worst_pairs`) or two passes (`select`, then `best_worst` over the
    scored table, as until 2026-12-01). `before` runs the
    old package; if its ids predate MD5 (no `factory.ids.pair_id_sql`), with the hashlib reference
    of the MD5 ids patched in."""
    import duckdb  # noqa: F401  (imported before the clock starts, as for duckdb_argmax)
    import polars as pl

    import factory.ids
    import factory.pairs
    import factory.routing
    from factory.pairs import best_worst
    from factory.routing import RoutingConfig, select

    before = variant == "before"
    if before and not hasattr(factory.ids, "pair_id_sql"):
        factory.routing.stable_index = reference_seeded_index
        factory.pairs.pair_ids = reference_pair_ids
    one_pass = VARIANTS.get(variant, False)
    out = Path(folder) / f"out_{variant}"
    out.mkdir(exist_ok=True)
    path = Path(folder) / "scored.parquet"
    result: dict = {"stages": {}}
    if stage == "select":
        t0 = time.perf_counter()
        if one_pass:
            sel, quarantine, candidates = factory.routing.select_with_candidates(path, STRATEGIES, RoutingConfig(), run_id="bench")
        else:
            sel, quarantine = select(path, STRATEGIES, RoutingConfig(), run_id="bench")
        result["seconds"] = time.perf_counter() - t0
        result["peak_rss_mib"] = _peak_mib()
        sel.write_parquet(out / "selections.parquet")  # writes are the IO manager's work: not timed
        quarantine.write_parquet(out / "quarantine.parquet")
        if one_pass:
            candidates.write_parquet(out / "candidates.parquet")
        result["counts"] = {s: sel.filter(pl.col("strategy") == s).height for s in STRATEGIES}
        result["digests"] = {s: _digest(sel.filter(pl.col("strategy") == s)["completion_id"].to_list()) for s in STRATEGIES}
        tables = ("selections", "quarantine")
    else:
        prompts = pl.read_parquet(Path(folder) / "prompts.parquet")
        t0 = time.perf_counter()
        if one_pass:  # the pairs step reads the candidates the selections step wrote
            pairs, stats = factory.pairs.best_worst_pairs(pl.read_parquet(out / "candidates.parquet"), prompts, run_id="bench")
        else:
            pairs, stats = best_worst(path, prompts, run_id="bench")
        result["seconds"] = time.perf_counter() - t0
        result["peak_rss_mib"] = _peak_mib()
        pairs.write_parquet(out / "pairs.parquet")
        result["counts"] = {"pairs": pairs.height}
        result["digests"] = {"pairs": _digest(pairs["pair_id"].to_list())}
        result["stats"] = json.dumps(stats, sort_keys=True)
        tables = ("pairs",)
        if variant == "engine":
            result["stages"]["ids"] = _id_seconds(out)
            result["stages"]["splitmix_ids"] = _splitmix_seconds(out)
    result["tables"] = {t: _frame_digest(out / f"{t}.parquet") for t in tables}
    result["rows"] = {t: _frame_digest(out / f"{t}.parquet", ordered=False) for t in tables}
    return result


def _id_seconds(out: Path) -> float:
    """What the ids cost on their own (random_routing's seeded index over every prompt and the pair
    ids, both MD5 in DuckDB), on this run's outputs, measured after the run (not part of its time)."""
    import polars as pl

    from factory.ids import pair_ids, seeded_index

    sel = pl.read_parquet(out.parent / "prompts.parquet", columns=["prompt_id"])
    pairs = pl.read_parquet(out / "pairs.parquet", columns=["prompt_id", "chosen_completion_id", "rejected_completion_id"])
    t = time.perf_counter()
    seeded_index(sel["prompt_id"], 0)
    pair_ids(pairs["prompt_id"], "best_worst", 0, pairs["chosen_completion_id"], pairs["rejected_completion_id"])
    return time.perf_counter() - t


def run_sql(folder: str) -> dict:
    """The same outputs as DuckDB SQL alone, a reference for what an engine query costs: one aggregate
    per prompt carrying the strings it needs (best and worst with their texts, each teacher's sample
    0 as a struct), then the strategies, their quarantine and the best_worst pairs (MD5 ids,
    messages) as SQL over that per-prompt table, in one process. No tie-breaking by completion_id and
    no duplicate samples, which the synthetic table does not have; its outputs are checked against
    the others'."""
    import duckdb
    import polars as pl

    from factory.ids import pair_id_sql, seeded_index_sql, sql_str
    from factory.languages import LANGUAGES, cluster_of
    from warehouse.schemas import PREFERENCE_PAIRS, SELECTIONS, conform

    out = Path(folder) / "out_sql"
    out.mkdir(exist_ok=True)
    path, prompts = sql_str(str(Path(folder) / "scored.parquet")), sql_str(str(Path(folder) / "prompts.parquet"))
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"CREATE VIEW s AS SELECT prompt_id, language, completion_id, teacher, sample_index, reward, language_match, text FROM read_parquet({path})")
    pool = sorted(t for (t,) in con.sql("SELECT DISTINCT teacher FROM s WHERE teacher IS NOT NULL").fetchall())
    single = con.sql("SELECT teacher FROM (SELECT teacher, language, avg(reward) AS m FROM s WHERE coalesce(isfinite(reward), false) GROUP BY ALL) "
                     "GROUP BY teacher ORDER BY avg(m) DESC, teacher LIMIT 1").fetchall()[0][0]
    ok = "coalesce(isfinite(reward), false) AND coalesce(language_match, false)"
    state = f"(CASE WHEN {ok} THEN 3 WHEN coalesce(isfinite(reward), false) THEN 2 ELSE 1 END)"
    samples = ", ".join(f"arg_max({{'c': completion_id, 'r': reward, 's': {state}}}, {state}) FILTER (sample_index = 0 AND teacher = {sql_str(t)}) AS t{i}"
                        for i, t in enumerate(pool))
    side = "{'c': completion_id, 't': teacher, 'x': text}"
    per = con.sql(f"""
        SELECT prompt_id, min(language) AS language, count(*) AS n_completions, count(reward) AS n_scored,
               count_if(coalesce(language_match, false))::BIGINT AS n_language_match, count_if({ok})::BIGINT AS n_eligible,
               arg_max({side}, reward) FILTER ({ok}) AS best, max(reward, 2) FILTER ({ok}) AS top,
               arg_min({side}, reward) FILTER ({ok}) AS worst, min(reward, 2) FILTER ({ok}) AS bottom, {samples}
        FROM s GROUP BY prompt_id ORDER BY prompt_id""").to_arrow_table()
    con.execute("SET preserve_insertion_order = true")  # each strategy's rows in prompt order, strategy after strategy
    con.register("per", per)
    fixed = "CASE language " + " ".join(f"WHEN {sql_str(code)} THEN {sql_str(cluster_of(code))}" for code in LANGUAGES) + " END"
    chosen = f"[{', '.join(sql_str(t) for t in pool)}][({seeded_index_sql('prompt_id', 0)} % {len(pool)})::BIGINT + 1]"
    con.execute(f"CREATE TEMP VIEW p AS SELECT *, {fixed} AS fixed_t, {chosen} AS random_t, {sql_str(single)} AS single_t FROM per")
    picked, missed = [], []
    for name, col in {"fixed_routing": "fixed_t", "random_routing": "random_t", "reward_routing": None, "single_teacher": "single_t"}.items():
        if col is None:
            picked.append("SELECT prompt_id, language, 'reward_routing', best.c, best.t, top[1], top[1] - coalesce(top[2], top[1]) FROM p WHERE best IS NOT NULL")
            missed.append("SELECT prompt_id, language, 'reward_routing', NULL::VARCHAR, 'no completion with a reward in the prompt''s language', "
                          "n_completions, n_scored, n_language_match FROM p WHERE best IS NULL")
            continue
        pick = f"CASE {col} " + " ".join(f"WHEN {sql_str(t)} THEN t{i}" for i, t in enumerate(pool)) + " END"
        rows = f"(SELECT *, {col} AS t, {pick} AS f FROM p)"
        picked.append(f"SELECT prompt_id, language, {sql_str(name)}, f.c, t, f.r, 0.0 FROM {rows} WHERE f.s = 3")
        where = "'teacher ' || t || '''s sample 0'"
        missed.append(f"SELECT prompt_id, language, {sql_str(name)}, t, CASE WHEN t IS NULL THEN 'no teacher assigned to the prompt' "
                      f"WHEN f IS NULL THEN {where} || ' does not exist' WHEN f.s = 1 THEN {where} || ' has no reward' "
                      f"ELSE {where} || ' is not in the prompt''s language' END, n_completions, n_scored, n_language_match "
                      f"FROM {rows} WHERE f IS NULL OR f.s <> 3")
    cols = "prompt_id, language, strategy, completion_id, teacher, reward, margin"
    sel = conform(con.sql(f"SELECT * FROM ({' UNION ALL '.join(picked)}) AS u({cols})").pl().with_columns(pl.lit("bench").alias("run_id")), SELECTIONS)
    payload = ("{'prompt_id': prompt_id, 'language': language, 'strategy': strategy, 'teacher': teacher, 'n_completions': n_completions, "
               "'n_scored': n_scored, 'n_language_match': n_language_match}")
    quarantine = con.sql(f"SELECT prompt_id AS row_key, strategy || ': ' || reason AS reason, to_json({payload})::VARCHAR AS payload "
                         f"FROM ({' UNION ALL '.join(missed)}) AS u(prompt_id, language, strategy, teacher, reason, n_completions, n_scored, n_language_match)").pl()
    t1 = time.perf_counter()
    con.execute("SET preserve_insertion_order = false")
    pairs = conform(con.sql(f"""
        SELECT {pair_id_sql('per.prompt_id', 'best_worst', 0, 'best.c', 'worst.c')} AS pair_id, per.prompt_id, language, 'best_worst' AS method, 0 AS round,
               [{{'role': 'user', 'content': pr.text}}] AS prompt, [{{'role': 'assistant', 'content': best.x}}] AS chosen,
               [{{'role': 'assistant', 'content': worst.x}}] AS rejected, best.c AS chosen_completion_id, worst.c AS rejected_completion_id,
               top[1] AS chosen_reward, bottom[1] AS rejected_reward, top[1] - bottom[1] AS margin, 'bench' AS run_id, 'reward' AS rule,
               best.t AS chosen_teacher, worst.t AS rejected_teacher
        FROM per JOIN read_parquet({prompts}) AS pr ON per.prompt_id = pr.prompt_id
        WHERE n_eligible >= 2 AND top[1] > bottom[1] AND trim(best.x) <> trim(worst.x) ORDER BY per.prompt_id""").pl(), PREFERENCE_PAIRS)
    n, single_, tie, same = con.sql("SELECT count(*), count_if(n_eligible < 2), count_if(n_eligible >= 2 AND top[1] <= bottom[1]), "
                                    "count_if(n_eligible >= 2 AND top[1] > bottom[1] AND trim(best.x) = trim(worst.x)) FROM per").fetchall()[0]
    t2 = time.perf_counter()
    peak = _peak_mib()
    stats = {"n_prompts": n, "n_pairs": pairs.height, "dropped_single": single_, "dropped_tie": tie, "dropped_identical": same,
             "dropped_margin": 0, "dropped_no_prompt": n - single_ - tie - same - pairs.height}
    sel.write_parquet(out / "selections.parquet")
    quarantine.write_parquet(out / "quarantine.parquet")
    pairs.write_parquet(out / "pairs.parquet")
    tables = ("selections", "quarantine", "pairs")
    return {
        "seconds": t2 - t0, "peak_rss_mib": peak, "stages": {"select": t1 - t0, "best_worst": t2 - t1},
        "counts": {**{s: sel.filter(pl.col("strategy") == s).height for s in STRATEGIES}, "pairs": pairs.height},
        "digests": {**{s: _digest(sel.filter(pl.col("strategy") == s)["completion_id"].to_list()) for s in STRATEGIES},
                    "pairs": _digest(pairs["pair_id"].to_list())},
        "stats": json.dumps(stats, sort_keys=True),
        "tables": {t: _frame_digest(out / f"{t}.parquet") for t in tables},
        "rows": {t: _frame_digest(out / f"{t}.parquet", ordered=False) for t in tables},
    }


def run_pandas(folder: str) -> dict:
    import pandas as pd
    import polars as pl

    from factory.languages import LANGUAGES, cluster_of

    t0 = time.perf_counter()
    df = pd.read_parquet(Path(folder) / "scored.parquet")
    ok = df[df["reward"].notna() & df["language_match"]]
    out = {}
    # reward_routing: sort, first per prompt (runner-up for the margin)
    ranked = ok.sort_values(["prompt_id", "reward", "completion_id"], ascending=[True, False, True])
    best = ranked.groupby("prompt_id", sort=False).head(1)
    runner = ranked.groupby("prompt_id", sort=False).nth(1)[["prompt_id", "reward"]].rename(columns={"reward": "runner_up"})
    best = best.merge(runner, on="prompt_id", how="left")
    best["margin"] = (best["reward"] - best["runner_up"]).fillna(0.0)
    out["reward_routing"] = best["completion_id"].tolist()
    sample0 = ok[ok["sample_index"] == 0]
    # fixed_routing: the language's cluster teacher
    fixed = {code: cluster_of(code) for code in LANGUAGES}
    pick = sample0[sample0["teacher"] == sample0["language"].map(fixed)]
    out["fixed_routing"] = pick.sort_values("completion_id").drop_duplicates("prompt_id")["completion_id"].tolist()
    # random_routing: a seeded teacher of the pool per prompt
    pool = sorted(df["teacher"].unique())
    ids = df["prompt_id"].unique()
    h = [int.from_bytes(hashlib.md5(b"0:" + p.encode()).digest()[:8], "big") for p in ids]
    chosen = pd.DataFrame({"prompt_id": ids, "chosen": [pool[x % len(pool)] for x in h]})
    rnd = sample0.merge(chosen, on="prompt_id")
    out["random_routing"] = rnd[rnd["teacher"] == rnd["chosen"]].sort_values("completion_id").drop_duplicates("prompt_id")["completion_id"].tolist()
    # single_teacher: best macro-mean reward
    scored = df[df["reward"].notna()]
    macro = scored.groupby(["language", "teacher"])["reward"].mean().groupby("teacher").mean()
    single = sorted(macro.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    out["single_teacher"] = sample0[sample0["teacher"] == single].sort_values("completion_id").drop_duplicates("prompt_id")["completion_id"].tolist()
    t1 = time.perf_counter()
    # best_worst: first and last of the reward ranking; drop ties, identical texts
    worst = ok.sort_values(["prompt_id", "reward", "completion_id"], ascending=[True, True, False]).groupby("prompt_id", sort=False).head(1)
    pairs = ranked.groupby("prompt_id", sort=False).head(1).merge(worst, on="prompt_id", suffixes=("_c", "_r"))
    n_ok = ok.groupby("prompt_id").size().rename("n").reset_index()
    pairs = pairs.merge(n_ok, on="prompt_id")
    keep = (pairs["n"] >= 2) & (pairs["reward_c"] > pairs["reward_r"]) & (pairs["text_c"].str.strip() != pairs["text_r"].str.strip())
    pairs = pairs[keep]
    ids = reference_pair_ids(pl.Series(pairs["prompt_id"]), "best_worst", 0, pl.Series(pairs["completion_id_c"]), pl.Series(pairs["completion_id_r"])).to_list()
    t2, peak = time.perf_counter(), _peak_mib()
    return {
        "seconds": t2 - t0, "peak_rss_mib": peak, "stages": {"select": t1 - t0, "best_worst": t2 - t1},
        "counts": {s: len(v) for s, v in out.items()} | {"pairs": len(ids)},
        "digests": {s: _digest(v) for s, v in out.items()} | {"pairs": _digest(ids)},
    }


def worker(impl: str, folder: str) -> None:
    name, _, stage = impl.partition(":")
    if name in PROJECT:
        run = lambda f: run_project(f, stage, name)  # noqa: E731
    else:
        run = {"duckdb_argmax": run_duckdb_argmax, "sql": run_sql, "pandas": run_pandas}[name]
    run(str(Path(folder) / "warmup"))  # imports, DuckDB's and polars' thread pools: not what is measured
    result = run(folder)
    result["seconds"] = round(result["seconds"], 2)
    result["stages"] = {k: round(v, 3) for k, v in result["stages"].items()}
    print("RESULT " + json.dumps({"impl": impl, **result}))


def _combine(select: dict, pairs: dict) -> dict:
    """The two stage processes of one implementation as one row: times add up, the peak is the larger."""
    if "error" in select or "error" in pairs:
        return {"error": select.get("error") or pairs.get("error")}
    return {
        "seconds": round(select["seconds"] + pairs["seconds"], 2),
        "stages": {"select": select["seconds"], "best_worst": pairs["seconds"], **pairs["stages"]},
        "peak_rss_mib": max(select["peak_rss_mib"], pairs["peak_rss_mib"]),
        "stage_peaks": [select["peak_rss_mib"], pairs["peak_rss_mib"]],
        **{k: select[k] | pairs[k] for k in ("counts", "digests", "tables", "rows")},
        "stats": pairs["stats"],
    }


def _spawn(args: list[str], timeout: float, pythonpath: str) -> dict:
    env = os.environ | {"PYTHONPATH": pythonpath}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:]) | {"process_seconds": round(time.perf_counter() - start, 2)}
    return {"error": f"exit {proc.returncode}: {proc.stderr[-600:]}"}


def _checkout(rev: str, into: Path) -> str | None:
    """The project's `factory` package at `rev`, unpacked under `into`; None (with why) if git cannot."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "factory"], capture_output=True)
    if archive.returncode:
        print(f"before: cannot read {rev}: {archive.stderr.decode()[-200:]}")
        return None
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return str(into)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of 2M prompts (x 5 teachers)")
    ap.add_argument("--impl", choices=["default", "all", "duckdb_argmax", *PROJECT, "sql", "pandas"], default="default",
                    help=f"default: duckdb_argmax, {', '.join(PROJECT)}, sql; all: and pandas")
    ap.add_argument("--before", default=BEFORE, help="git revision of the implementation to compare with")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per implementation, seconds")
    ap.add_argument("--out", type=Path, help="append the figures to this Markdown file")
    ap.add_argument("--text-bytes", type=int, default=0,
                    help="make every completion text distinct and this many bytes longer (default: 1-2 byte texts), for memory with long texts")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate:
        return generate(a.data, a.generate, text_bytes=a.text_bytes)
    if a.worker:
        return worker(a.worker, a.data)

    n_prompts = int(2_000_000 * a.scale)
    impls = {"default": ["duckdb_argmax", *PROJECT, "sql"], "all": ["duckdb_argmax", *PROJECT, "sql", "pandas"]}.get(a.impl, [a.impl])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_selection_") as tmp:
        t = time.perf_counter()
        gen = subprocess.run([sys.executable, __file__, "--generate", str(n_prompts), "--data", tmp, "--text-bytes", str(a.text_bytes)], env=os.environ | {"PYTHONPATH": str(ROOT)})
        if gen.returncode:
            sys.exit("data generation failed")
        size = (Path(tmp) / "scored.parquet").stat().st_size / 2**20
        print(f"generated {n_prompts * len(TEACHERS):,} scored completions ({n_prompts:,} prompts) in {time.perf_counter() - t:.1f}s, {size:.0f} MiB Parquet")
        old = _checkout(a.before, Path(tmp) / "before") if "before" in impls else None
        results = {}
        for impl in impls:
            if impl == "before" and old is None:
                results[impl] = {"error": f"no checkout of {a.before}"}
                continue
            path = f"{old}{os.pathsep}{ROOT}" if impl == "before" else str(ROOT)
            if impl in PROJECT:
                stages = [_spawn(["--worker", f"{impl}:{stage}", "--data", tmp], a.timeout, path) for stage in ("select", "best_worst")]
                results[impl] = _combine(*stages)
            else:
                results[impl] = _spawn(["--worker", impl, "--data", tmp], a.timeout, path)
            print(impl, json.dumps(results[impl]), flush=True)
    report = _report(n_prompts, results, a.before, load_before, os.getloadavg(), a.text_bytes)
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as f:
            f.write(report + "\n")


def _report(n_prompts: int, results: dict, before: str, load_before: tuple, load_after: tuple, text_bytes: int = 0) -> str:
    bare = results.get("duckdb_argmax", {}).get("seconds")
    load = lambda la: ", ".join(f"{x:.2f}" for x in la)  # noqa: E731
    lines = [
        f"## {dt.date.today().isoformat()}: {n_prompts * len(TEACHERS):,} completions ({n_prompts:,} prompts x {len(TEACHERS)} teachers)"
        + (f", texts {text_bytes:,} bytes longer" if text_bytes else ""),
        "",
        f"Machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}; "
        f"load average (1, 5, 15 min) {load(load_before)} before, {load(load_after)} after.",
        "",
        "| implementation | wall s | select s | best_worst s | x bare group-by | peak RSS MiB (select / best_worst) | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for impl, r in results.items():
        name = f"{impl} ({before})" if impl == "before" else impl
        if "error" in r:
            lines.append(f"| {name} | - | - | - | - | - | {r['error'][:120]} |")
            continue
        ratio = f"{r['seconds'] / bare:.1f}" if bare else "-"
        st = r["stages"]
        peak = " / ".join(str(p) for p in r["stage_peaks"]) if "stage_peaks" in r else r["peak_rss_mib"]
        lines.append(f"| {name} | {r['seconds']} | {st.get('select', '-')} | {st.get('best_worst', '-')} | {ratio} | {peak} | ok |")
    eng, old, pan = results.get("engine", {}), results.get("before", {}), results.get("pandas", {})
    if "stages" in eng and "ids" in eng["stages"]:
        lines += ["", f"Of the engine's time, the ids alone (random_routing's seeded index over every prompt and the pair ids, "
                      f"timed separately on the same outputs) takes {eng['stages']['ids']} s"
                      + (f" = {eng['stages']['ids'] / bare:.1f}x the bare group-by" if bare else "")
                      + f"; the same ids from a splitmix64 mix of the parsed 64-bit ids in numpy (a prototype, not used) would take "
                      f"{eng['stages'].get('splitmix_ids', '-')} s."]
    if "rows" in old:
        lines += ["", f"Outputs against before ({before}): same rows in any order (digests of sorted row hashes) / same rows in the same order:"]
        for impl, r in results.items():
            if impl == "before" or "rows" not in r:
                continue
            same = ", ".join(f"{k} {'yes' if r['rows'][k] == old['rows'][k] else 'NO'}/{'yes' if r['tables'][k] == old['tables'][k] else 'no'}"
                             for k in r["rows"])
            stats = "yes" if r.get("stats") == old.get("stats") else "NO"
            lines.append(f"- {impl}: {same}; best_worst stats {stats}.")
        if "seconds" in eng:
            lines += ["", f"before / engine: time x{old['seconds'] / eng['seconds']:.1f}, peak memory x{old['peak_rss_mib'] / eng['peak_rss_mib']:.2f}."]
    if "digests" in eng and "digests" in pan:
        same = eng["digests"] == pan["digests"]
        lines += ["", f"pandas / engine: time x{pan['seconds'] / eng['seconds']:.1f}; selected ids and pair ids identical: {'yes' if same else 'NO'}."]
    if any("counts" in r for r in (eng, old)):
        lines += ["", f"Counts: {json.dumps(next(r['counts'] for r in (eng, old) if 'counts' in r))}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
