"""Preference-pair builders and their checks.

Output rows follow warehouse.schemas.PREFERENCE_PAIRS: TRL's conversational
preference format (prompt = [user turn], chosen / rejected = [assistant turn],
lists of {role, content}), so `trl.DPOTrainer` trains on a `datasets.Dataset`
of the table as is; plus pair_id, ids, rewards, margin, method, round, run_id,
and the extra columns chosen_teacher / rejected_teacher.

Builders (PAIR_BUILDERS):
- best_worst: per prompt the highest- vs lowest-reward eligible completion
  (also the online rounds: method="online", round=k).
- native_vs_translated: chosen = the best in-language completion; rejected = a
  weaker teacher's English answer translated into the language.
- language_guarded_pairs (what the online rounds call): best_worst among right-language
  completions, except that a policy's top-reward answer in the wrong language is
  rejected against the best right-language one (column `rule`: reward | language).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from factory.generation.base import Completion, GenerationBackend, Message, SamplingConfig, generate_per_row
from factory.generation.registry import TeacherConfig
from factory.ids import completion_id, normalize_text, pair_ids
from factory.languages import LANGUAGES
from factory.routing import PAIR_COLUMNS, Source, pair_candidates
from factory.scoring.base import RewardScorer
from factory.settings import Strict
from factory.sft_data import message
from warehouse.schemas import GENERATIONS, PAIR_RULE_DEFAULT, PREFERENCE_PAIRS, conform, rejected, rejected_frame

DROP_REASONS = ("single", "tie", "identical", "margin", "no_prompt")


class BestWorstConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_margin: float = 0.0  # keep a pair only if chosen_reward - rejected_reward >= this
    require_language_match: bool = True


# --- best_worst -------------------------------------------------------------------------------


def candidate_status(candidates: pl.DataFrame, min_margin: float = 0.0) -> pl.DataFrame:
    """`candidates` (factory.routing.pair_candidates, or the pair_candidates table) with `margin`
    (chosen_reward - rejected_reward) and `status` (kept, single, tie, identical, margin)."""
    missing = [c for c in ("prompt_id", "n_eligible", "chosen_completion_id", "chosen_reward", "rejected_completion_id", "rejected_reward")
               if c not in candidates.columns]
    if missing:
        raise ValueError(f"pair candidates lack columns: {', '.join(missing)}")
    out = candidates.with_columns((pl.col("chosen_reward") - pl.col("rejected_reward")).alias("margin"))
    status = pl.when(pl.col("n_eligible") < 2).then(pl.lit("single")).when(pl.col("margin") <= 0).then(pl.lit("tie"))
    if "chosen_text" in out.columns:
        same = pl.col("chosen_text").str.strip_chars() == pl.col("rejected_text").str.strip_chars()
        status = status.when(same).then(pl.lit("identical"))
    status = status.when(pl.col("margin") < min_margin).then(pl.lit("margin")).otherwise(pl.lit("kept"))
    return out.with_columns(status.alias("status"))


def best_worst(
    scored: Source,
    prompts: pl.DataFrame,
    min_margin: float = 0.0,
    method: str = "best_worst",
    round: int = 0,
    require_language_match: bool = True,
    run_id: str = "",
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Highest- vs lowest-reward completion per prompt. Returns (pairs per PREFERENCE_PAIRS, stats) with
    stats n_prompts, n_pairs and dropped_<single|tie|identical|margin|no_prompt>, which add up to n_prompts.
    Pairs come by prompt_id."""
    return best_worst_pairs(pair_candidates(scored, require_language_match), prompts, min_margin, method, round, run_id)


def best_worst_pairs(
    candidates: pl.DataFrame, prompts: pl.DataFrame, min_margin: float = 0.0, method: str = "best_worst", round: int = 0, run_id: str = ""
) -> tuple[pl.DataFrame, dict[str, int]]:
    """`best_worst` from its candidates (factory.routing.pair_candidates, e.g. the pair_candidates
    table the selections step writes), in their order."""
    cand = candidate_status(candidates, min_margin)
    counts, n_prompts = dict(cand.group_by("status").len().iter_rows()), cand.height
    kept = cand.filter(pl.col("status") == "kept").drop("status")
    del cand  # one copy of the candidates at a time: at 10M completions they are hundreds of MB
    kept = kept.join(prompts.select("prompt_id", pl.col("text").alias("prompt_text")), on="prompt_id", how="left", maintain_order="left")
    lacking = kept["prompt_text"].is_null()
    if lacking.any():
        counts["no_prompt"], counts["kept"] = int(lacking.sum()), counts["kept"] - int(lacking.sum())
        kept = kept.filter(~lacking)
    stats = {"n_prompts": n_prompts, "n_pairs": counts.get("kept", 0)} | {f"dropped_{r}": counts.get(r, 0) for r in DROP_REASONS}
    kept = kept.with_columns(pair_ids(kept["prompt_id"], method, round, kept["chosen_completion_id"], kept["rejected_completion_id"]))
    pairs = kept.select(
        "pair_id",
        "prompt_id",
        "language",
        pl.lit(method).alias("method"),
        pl.lit(round).alias("round"),
        message("user", pl.col("prompt_text")).alias("prompt"),
        message("assistant", pl.col("chosen_text")).alias("chosen"),
        message("assistant", pl.col("rejected_text")).alias("rejected"),
        "chosen_completion_id",
        "rejected_completion_id",
        "chosen_reward",
        "rejected_reward",
        "margin",
        pl.lit(run_id).alias("run_id"),
        "chosen_teacher",
        "rejected_teacher",
    )
    return conform(pairs, PREFERENCE_PAIRS), stats


# --- native_vs_translated ---------------------------------------------------------------------


class TranslatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = "Translate the following text from {source} to {target}. Reply with the translation only.\n\n{text}"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=96))


class NativeVsTranslatedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    translator: TranslatorConfig = Field(default_factory=TranslatorConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)  # the weak teacher's English answer
    skip_languages: list[str] = Field(default_factory=lambda: ["en"])  # nothing to translate
    batch_size: int = 32


def _generate(backend: GenerationBackend, prompts: list[str], sampling: SamplingConfig, batch_size: int) -> list[Completion]:
    """One completion per prompt; a request that fails becomes an error completion for that row only."""
    out: list[Completion] = []
    for start in range(0, len(prompts), batch_size):
        convs: list[list[Message]] = [[{"role": "user", "content": p}] for p in prompts[start : start + batch_size]]
        out.extend(c[0] for c in generate_per_row(backend, convs, sampling, n=1))
    return out


def _translate(backend: GenerationBackend, texts: list[str], sources: list[str], targets: list[str], cfg: NativeVsTranslatedConfig) -> list[Completion]:
    t = cfg.translator
    prompts = [t.template.format(source=s, target=g, text=x) for x, s, g in zip(texts, sources, targets, strict=True)]
    return _generate(backend, prompts, t.sampling, cfg.batch_size)


def _failed(c: Completion) -> bool:
    return c.finish_reason == "error" or not c.text.strip()


def native_vs_translated(
    best_in_language: pl.DataFrame,
    prompts: pl.DataFrame,
    weak_backend: GenerationBackend,
    translator_backend: GenerationBackend,
    cfg: NativeVsTranslatedConfig | None = None,
    run_id: str = "",
    scorer: RewardScorer | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Chosen = best in-language completion; rejected = weak teacher's English answer to the prompt's
    English translation, translated back into the prompt's language.

    Reads best_in_language [prompt_id, language, completion_id, reward, text] (e.g. reward_routing
    selections joined with generations' text) and prompts [prompt_id, text]. Returns (pairs,
    translated completions as GENERATIONS rows with teacher "<weak>+translate" plus english_prompt /
    english_answer, quarantine [row_key, reason, payload]). rejected_reward is filled when a scorer is given.
    """
    cfg = cfg or NativeVsTranslatedConfig()
    rows = best_in_language.join(prompts.select("prompt_id", pl.col("text").alias("prompt_text")), on="prompt_id", how="left")
    quarantine: list[dict] = []
    todo = []
    for r in rows.iter_rows(named=True):
        if r["language"] in cfg.skip_languages:
            reason = f"language {r['language']} is skipped (nothing to translate)"
        elif not r["prompt_text"]:
            reason = "prompt text missing"
        elif not (r.get("text") or "").strip():
            reason = "chosen completion text missing"
        else:
            todo.append(r)
            continue
        quarantine.append(_q(r, reason))
    name = {code: lang.name for code, lang in LANGUAGES.items()}
    stage = [_translate(translator_backend, [r["prompt_text"] for r in todo], [name[r["language"]] for r in todo], ["English"] * len(todo), cfg)]
    todo, stage = _drop_failed(todo, stage, "translating the prompt to English failed", quarantine)
    answers = _generate(weak_backend, [c.text for c in stage[0]], cfg.sampling, cfg.batch_size)
    todo, (en_prompts, answers) = _drop_failed(todo, [stage[0], answers], "the weak teacher's English answer failed", quarantine)
    back = _translate(translator_backend, [a.text for a in answers], ["English"] * len(todo), [name[r["language"]] for r in todo], cfg)
    todo, (en_prompts, answers, back) = _drop_failed(todo, [en_prompts, answers, back], "translating the answer back failed", quarantine)

    teacher = f"{weak_backend.name}+translate"
    sampling = {"weak": cfg.sampling.key(), "translator": cfg.translator.sampling.key(), "template": cfg.translator.template}
    gens = pl.DataFrame(
        [
            {
                "completion_id": completion_id(r["prompt_id"], teacher, sampling, 0),
                "prompt_id": r["prompt_id"],
                "language": r["language"],
                "teacher": teacher,
                "backend": f"{weak_backend.name}+{translator_backend.name}",
                "sample_index": 0,
                "sampling": json.dumps(sampling, sort_keys=True),
                "text": b.text,
                "n_tokens": b.n_tokens,
                "finish_reason": b.finish_reason,
                "seconds": p.seconds + a.seconds + b.seconds,
                "run_id": run_id,
                "english_prompt": p.text,
                "english_answer": a.text,
            }
            for r, p, a, b in zip(todo, en_prompts, answers, back, strict=True)
        ],
        schema={**GENERATIONS, "english_prompt": pl.String, "english_answer": pl.String},
    )
    rejected_rewards: list[float | None] = [None] * len(todo)
    if scorer is not None and todo:
        rejected_rewards = scorer.score([[{"role": "user", "content": r["prompt_text"]}] for r in todo], [b.text for b in back])
    pair_rows = []
    for r, g, rr in zip(todo, gens.iter_rows(named=True), rejected_rewards, strict=True):
        if normalize_text(g["text"]) == normalize_text(r["text"]):
            quarantine.append(_q(r, "translated answer is identical to the chosen completion"))
            continue
        pair_rows.append(
            {
                "pair_id": "",  # filled below, all rows at once
                "prompt_id": r["prompt_id"],
                "language": r["language"],
                "method": "native_vs_translated",
                "round": 0,
                "prompt": [{"role": "user", "content": r["prompt_text"]}],
                "chosen": [{"role": "assistant", "content": r["text"]}],
                "rejected": [{"role": "assistant", "content": g["text"]}],
                "chosen_completion_id": r["completion_id"],
                "rejected_completion_id": g["completion_id"],
                "chosen_reward": r.get("reward"),
                "rejected_reward": rr,
                "margin": None if rr is None or r.get("reward") is None else r["reward"] - rr,
                "run_id": run_id,
                "chosen_teacher": r.get("teacher"),
                "rejected_teacher": teacher,
            }
        )
    pairs = pl.DataFrame(pair_rows, schema={**PREFERENCE_PAIRS, "chosen_teacher": pl.String, "rejected_teacher": pl.String})
    pairs = pairs.with_columns(pair_ids(pairs["prompt_id"], "native_vs_translated", 0, pairs["chosen_completion_id"], pairs["rejected_completion_id"]))
    q = rejected_frame(quarantine)
    return pairs, gens, q


def _q(row: dict, reason: str) -> dict:
    return rejected(row["prompt_id"], f"native_vs_translated: {reason}", row)


def _drop_failed(todo: list[dict], stages: list[list[Completion]], reason: str, quarantine: list[dict]):
    """Keep the rows whose latest stage succeeded; quarantine the others with `reason`."""
    keep = [i for i, c in enumerate(stages[-1]) if not _failed(c)]
    for i in sorted(set(range(len(todo))) - set(keep)):
        c = stages[-1][i]
        quarantine.append(_q(todo[i], f"{reason} ({c.error or c.finish_reason})"))
    return [todo[i] for i in keep], [[s[i] for i in keep] for s in stages]


# --- language_guarded_pairs (online rounds) -------------------------------------------------


def _top(scored: pl.DataFrame, language_match: bool) -> pl.DataFrame:
    """Per prompt the highest-reward completion whose language_match is `language_match` (ties by id),
    among finite rewards (the eligibility rule of best_worst: a NaN or inf reward ranks nothing)."""
    return (
        scored.filter((pl.col("language_match") == language_match) & pl.col("reward").is_finite())
        .sort(["prompt_id", "reward", "completion_id"], descending=[False, True, False])
        .group_by("prompt_id", maintain_order=True).first()
    )


def language_guarded_pairs(
    scored: pl.DataFrame,
    prompts: pl.DataFrame,
    min_margin: float = 0.0,
    method: str = "online",
    round: int = 0,
    run_id: str = "",
) -> tuple[pl.DataFrame, dict]:
    """Best vs worst with the language guard, for a policy's own samples (the online rounds).

    A completion in the wrong language (language_match false) is never chosen. Per prompt:
    - rule "language": when the highest-reward completion is in the wrong language and a
      right-language one exists, the pair is (best right-language, that wrong-language one): the
      reward model prefers an answer the policy must unlearn, whatever its reward;
    - rule "reward": otherwise best vs worst among the right-language completions (`best_worst`
      with require_language_match, its min_margin and drop rules).

    Reads scored [prompt_id, language, completion_id, teacher, reward, language_match, text] (a
    frame). Returns (pairs per PREFERENCE_PAIRS plus chosen_teacher, rejected_teacher,
    chosen_language_match, rejected_language_match; stats): stats n_prompts, n_pairs, by_rule
    {reward, language}, language_over_reward (prompts whose reward pair the language rule
    replaced), dropped_identical_language, and best_worst's own stats under `reward_rule`.
    A language pair's margin is negative: the Arbiter preferred the rejected answer.
    """
    missing = [c for c in (*PAIR_COLUMNS, "text") if c not in scored.columns]
    if missing:
        raise ValueError(f"language_guarded_pairs: scored lacks columns {', '.join(missing)}")
    reward_pairs, bw_stats = best_worst(scored, prompts, min_margin, method=method, round=round,
                                        require_language_match=True, run_id=run_id)
    reward_pairs = reward_pairs.with_columns(
        pl.lit("reward").alias("rule"), pl.lit(True).alias("chosen_language_match"), pl.lit(True).alias("rejected_language_match"))
    cols = ["prompt_id", "language", "completion_id", "teacher", "reward", "text"]
    right, wrong = _top(scored, True).select(cols), _top(scored, False).select(cols)
    lang = (
        right.select(pl.all().name.prefix("chosen_")).rename({"chosen_prompt_id": "prompt_id", "chosen_language": "language"})
        .join(wrong.select("prompt_id", *(pl.col(c).alias(f"rejected_{c}") for c in cols[2:])), on="prompt_id")
        .filter(pl.col("rejected_reward") > pl.col("chosen_reward"))
        .join(prompts.select("prompt_id", pl.col("text").alias("prompt_text")), on="prompt_id")
    )
    same = lang["chosen_text"].str.strip_chars() == lang["rejected_text"].str.strip_chars()
    n_identical = int(same.sum())
    lang = lang.filter(~same).sort("prompt_id")
    lang = lang.with_columns(pair_ids(lang["prompt_id"], method, round, lang["chosen_completion_id"], lang["rejected_completion_id"]))
    lang_pairs = lang.select(
        "pair_id", "prompt_id", "language", pl.lit(method).alias("method"), pl.lit(round).alias("round"),
        message("user", pl.col("prompt_text")).alias("prompt"),
        message("assistant", pl.col("chosen_text")).alias("chosen"),
        message("assistant", pl.col("rejected_text")).alias("rejected"),
        "chosen_completion_id", "rejected_completion_id", "chosen_reward", "rejected_reward",
        (pl.col("chosen_reward") - pl.col("rejected_reward")).alias("margin"), pl.lit(run_id).alias("run_id"),
        pl.lit("language").alias("rule"), "chosen_teacher", "rejected_teacher",
        pl.lit(True).alias("chosen_language_match"), pl.lit(False).alias("rejected_language_match"),
    )
    kept = reward_pairs.filter(~pl.col("prompt_id").is_in(lang_pairs["prompt_id"].implode()))
    pairs = conform(pl.concat([kept, lang_pairs], how="diagonal_relaxed").sort("prompt_id", "pair_id"), PREFERENCE_PAIRS)
    stats = {
        "n_prompts": bw_stats["n_prompts"],
        "n_pairs": pairs.height,
        "by_rule": {"reward": kept.height, "language": lang_pairs.height},
        "language_over_reward": reward_pairs.height - kept.height,
        "dropped_identical_language": n_identical,
        "reward_rule": bw_stats,
    }
    return pairs, stats


PAIR_BUILDERS = {
    "best_worst": best_worst,
    "online": partial(language_guarded_pairs, method="online"),
    "native_vs_translated": native_vs_translated,
}


# --- checks (pure; the Dagster layer turns them into asset checks) ----------------------------


def check_pairs(pairs: pl.DataFrame) -> list[str]:
    """Problems in a pairs table: best_worst/online rows of the reward rule must have chosen_reward >
    rejected_reward; rows of the language rule must have a right-language chosen and a wrong-language
    rejected (chosen_language_match true, rejected_language_match false); no pair may have identical
    chosen and rejected text or completion ids; pair ids are unique. A table without `rule` is all
    reward/translation rule (warehouse.schemas.PAIR_RULE_DEFAULT)."""
    problems = []
    rule = pl.col("rule").fill_null(PAIR_RULE_DEFAULT) if "rule" in pairs.columns else PAIR_RULE_DEFAULT
    pairs = pairs.with_columns(rule.alias("rule"))
    ranked = pairs.filter(pl.col("method").is_in(["best_worst", "online"]) & (pl.col("rule") == "reward"))
    bad = ranked.filter(~(pl.col("chosen_reward") > pl.col("rejected_reward")).fill_null(False))
    if bad.height:
        problems.append(f"{bad.height} {'/'.join(sorted(set(bad['method'])))} pairs without chosen_reward > rejected_reward, e.g. {bad['pair_id'][0]}")
    guarded = pairs.filter(pl.col("rule") == "language")
    if guarded.height:
        flags = [c for c in ("chosen_language_match", "rejected_language_match") if c not in guarded.columns]
        if flags:
            problems.append(f"{guarded.height} language-rule pairs without {' and '.join(flags)}, e.g. {guarded['pair_id'][0]}")
        else:
            ok = (pl.col("chosen_language_match") == True) & (pl.col("rejected_language_match") == False)  # noqa: E712
            wrong = guarded.filter(~ok.fill_null(False))
            if wrong.height:
                problems.append(f"{wrong.height} language-rule pairs whose chosen is not in the prompt's language or whose "
                                f"rejected is, e.g. {wrong['pair_id'][0]}")
    unknown = sorted(set(pairs["rule"].to_list()) - {"reward", "language", "translation"})
    if unknown:
        problems.append(f"unknown pair rule(s) {', '.join(map(str, unknown))}")
    last = lambda c: pl.col(c).list.last().struct.field("content").str.strip_chars()  # noqa: E731
    same = pairs.filter((last("chosen") == last("rejected")) | (pl.col("chosen_completion_id") == pl.col("rejected_completion_id")))
    if same.height:
        problems.append(f"{same.height} pairs with identical chosen and rejected, e.g. {same['pair_id'][0]}")
    dup = pairs.height - pairs["pair_id"].n_unique()
    if dup:
        problems.append(f"{dup} duplicate pair_id values")
    return problems


def pair_counts(pairs: pl.DataFrame, min_per_language: int, languages: Sequence[str] | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Pairs per language x method, and a warning for every language (of `languages`, default the
    ones present) with fewer than `min_per_language` pairs in total."""
    counts = pairs.group_by("language", "method").len("n_pairs").sort("language", "method")
    totals = dict(counts.group_by("language").agg(pl.col("n_pairs").sum()).iter_rows())
    expected = list(languages) if languages is not None else sorted(totals)
    warnings = [
        f"language {lang}: {totals.get(lang, 0)} pairs < minimum {min_per_language}"
        for lang in expected
        if totals.get(lang, 0) < min_per_language
    ]
    return counts, warnings


class NativeVsTranslatedSettings(NativeVsTranslatedConfig):
    enabled: bool = True
    weak_teacher: str | None = None  # a teacher name; default: the one with the lowest mean reward
    translator_model: TeacherConfig | None = None  # any backend; default: the embedded base model


class PairsConfig(Strict):
    best_worst: BestWorstConfig = Field(default_factory=BestWorstConfig)
    native_vs_translated: NativeVsTranslatedSettings = Field(default_factory=NativeVsTranslatedSettings)
    min_pairs_per_language: int = 3  # fewer pairs in a language is reported as a warning


def weakest_teacher(scored: pl.DataFrame, teachers: Sequence[str], configured: str | None = None) -> str:
    """native_vs_translated's rejected side comes from this teacher: `configured`, else the one with the
    lowest mean reward (ties by name)."""
    weak = configured or scored.group_by("teacher").agg(pl.col("reward").mean()).sort(["reward", "teacher"]).row(0)[0]
    if weak not in teachers:
        raise ValueError(f"pairs.native_vs_translated.weak_teacher {weak!r} is not a teacher; have {sorted(teachers)}")
    return weak
