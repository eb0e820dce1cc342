"""Prompt sources and validation: raw rows in, (prompts, quarantine, counts) out.

Reads: `RawPrompt` rows from the configured sources. Writes: the `prompts` table
columns (warehouse.schemas.PROMPTS) and quarantine rows (row_key, reason, payload,
code). Every row read lands in exactly one place, so counts reconcile per
partition: read = kept + quarantined, where duplicates are quarantined too (code
`duplicate`), and rows no partition of the run takes are counted once, as
`unrouted` (see `unrouted_owner`).

Quarantine codes: malformed, bad_encoding, missing_column (the row could not be
read); unknown_language, language_not_in_run (no partition of the run takes it);
empty, too_long, language_mismatch (the prompt is invalid); duplicate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import polars as pl
from pydantic import Field, model_validator

from factory import ids
from factory.langid import contradicts
from factory.languages import LANGUAGES
from factory.settings import Strict
from factory.sources.chatterbot import iter_raw
from factory.sources.config import PromptSource
from factory.sources.files import read_records
from factory.sources.raw import RawPrompt, utf8_problem, utf8_safe
from warehouse import schemas
from warehouse.schemas import UNROUTED

# Accepted spellings of language labels in user data -> Aya code.
_ALIASES = {c.lower(): c for c in LANGUAGES} | {
    "zh": "zh-Hans", "zh-cn": "zh-Hans", "zh_cn": "zh-Hans", "zh-sg": "zh-Hans", "zh_hans": "zh-Hans",
    "zh-tw": "zh-Hant", "zh_tw": "zh-Hant", "zh-hk": "zh-Hant", "zh_hant": "zh-Hant",
    "pt-br": "pt", "pt_br": "pt", "pt-pt": "pt", "en-us": "en", "en-gb": "en", "es-419": "es",
}

__all__ = ["RawPrompt", "PromptBatch", "UNROUTED", "build_prompts", "clean_text", "load_prompts", "read_source"]


def normalize_language(label) -> str | None:
    """An Aya code for a label such as 'ES', 'zh_TW' or 'pt-BR'; None if unknown."""
    if not isinstance(label, str):
        return None
    return _ALIASES.get(label.strip().lower())


def unrouted_owner(languages: list[str]) -> str:
    """The language partition that handles rows no partition of the run takes.

    `prompts` is partitioned by language and every partition reads every source, so
    a row labelled with an unknown code, a row that cannot be read, or a row of a
    language outside the run (`fr` when the run has en/es) is seen by every
    partition. Exactly one of them, the run's first language, quarantines such rows
    (into the `unrouted` quarantine partition) and counts them; the others skip
    them. The first language is part of every full run, and a single owner keeps
    partitions that run in parallel from writing the same quarantine partition.
    Materializing other partitions alone leaves `unrouted` as it was.
    """
    if not languages:
        raise ValueError("the run has no languages")
    return languages[0]


@dataclass
class PromptBatch:
    prompts: pl.DataFrame
    quarantine: pl.DataFrame  # this partition's rejected rows, duplicates included (schemas.REJECTED and code)
    unrouted: pl.DataFrame  # rows no partition takes; only the owner partition has any
    counts: dict[str, int]
    owns_unrouted: bool = False  # this partition writes the `unrouted` quarantine partition


# -- sources -------------------------------------------------------------------------


def read_source(src: PromptSource, language: str, languages: list[str]) -> Iterator[RawPrompt]:
    """Rows of `src` for the `language` partition: those labelled `language` and, in the
    partition of `unrouted_owner(languages)`, those no run language takes (for quarantine)."""
    owner = language == unrouted_owner(languages)
    rows = _read_chatterbot(language) if src.kind == "chatterbot" else read_records(src)
    label = utf8_safe(src.source_label())
    taken: dict[str, int] = {}
    for row in rows:
        row.source = row.source or label
        if src.language is not None:
            row.language = src.language
        code = normalize_language(row.language)
        if code != language and not (owner and code not in languages):
            continue  # another partition's row
        if code is not None and src.max_per_language is not None:
            if taken.get(code, 0) >= src.max_per_language:
                continue  # the source is configured to read at most this many rows per language
            taken[code] = taken.get(code, 0) + 1
        yield row


def _read_chatterbot(language: str) -> Iterator[RawPrompt]:
    for code, rel, i, conv in iter_raw([language]):
        key = f"chatterbot:{rel}#{i}"
        if i < 0:
            yield RawPrompt(code, None, [], key, key, error=str(conv[0]), error_code="malformed")
            continue
        turns = ["" if t is None else str(t) for t in conv]
        yield RawPrompt(code, turns[0] if turns else None, [t.strip() for t in turns[1:] if t.strip()], key, key)


# -- validation ----------------------------------------------------------------------

_NEWLINES = re.compile(r"\r\n?|[\x0b\x0c\x85]")
# C0/C1 control characters other than tab and newline, and zero-width characters that
# are invisible wherever they are (zero-width space, word joiner, byte-order mark).
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_JOINERS = re.compile(r"[\u200c\u200d]+")


def _keep_joiners(m: re.Match) -> str:
    text, a, b = m.string, m.start(), m.end()
    inside = a > 0 and b < len(text) and not text[a - 1].isspace() and not text[b].isspace()
    return m.group() if inside else ""


def clean_text(text: str) -> str:
    """The prompt text as stored and identified: line breaks as `\\n`, control characters
    (other than tab and newline) and zero-width characters removed, NFC, stripped.

    The zero-width (non-)joiners U+200C/U+200D are kept between two visible characters:
    there they are spelling (Persian, Hindi, emoji sequences), elsewhere nothing.
    """
    text = _INVISIBLE.sub("", _NEWLINES.sub("\n", text))
    return ids.normalize_text(_JOINERS.sub(_keep_joiners, text))


def _encoding_problem(row: RawPrompt) -> str | None:
    fields = [("prompt text", row.text), ("language label", row.language)]
    fields += [(f"reference {i}", r) for i, r in enumerate(row.references)]
    for name, value in fields:
        problem = utf8_problem(value) if isinstance(value, str) else None
        if problem:
            return f"{name} is not valid Unicode: {problem}"
    return None


def _bucket(pid: str) -> int:
    """A prompt's place in [0, 10000), from its id: what decides its split."""
    return int(pid[2:], 16) % 10_000


def _split(pid: str, eval_fraction: float) -> str:
    return "eval" if _bucket(pid) < eval_fraction * 10_000 else "train"


def _dev_bucket(pid: str) -> int:
    """A second place in [0, 10000), from other digits of the id than `_bucket`: what decides which
    train prompts are dev, independently of how close they came to eval."""
    return int(pid[2:], 16) // 10_000 % 10_000


def eval_floor(n: int, eval_min: int, eval_max_share: float) -> int:
    """How many eval prompts a language with `n` prompts gets at least: `eval_min`, but never more
    than `eval_max_share` of a small language. (The dev floor is the same rule with dev_min and
    dev_max_share.)"""
    return min(eval_min, int(eval_max_share * n))


def _top_up(splits: dict[str, str], to: str, floor: int, key) -> None:
    """Move the train prompts with the lowest `key` to split `to` until it has `floor` prompts."""
    missing = floor - sum(s == to for s in splits.values())
    if missing > 0:
        for pid in sorted((p for p, s in splits.items() if s == "train"), key=lambda p: (key(p), p))[:missing]:
            splits[pid] = to


def assign_splits(pids: list[str], cfg: PromptsConfig) -> dict[str, str]:
    """prompt_id -> split (train | dev | eval) for one language.

    Eval first: a prompt is eval when its bucket is below eval_fraction (stable: adding prompts never
    moves it), and when that leaves fewer than the floor, the train prompts with the lowest buckets
    join eval until the floor is reached (so every language has an eval set large enough to
    estimate; only then can a prompt's split depend on the others). Dev is then taken from what is
    left, the same way with a second bucket (`_dev_bucket`), dev_fraction and the floor of
    dev_min / dev_max_share. Eval is the same with or without a dev split; dev prompts are neither
    trained on nor evaluated on: the online rounds decide on them (training.online)."""
    splits = {pid: _split(pid, cfg.eval_fraction) for pid in pids}
    _top_up(splits, "eval", eval_floor(len(pids), cfg.eval_min, cfg.eval_max_share), _bucket)
    for pid, split in splits.items():
        if split == "train" and _dev_bucket(pid) < cfg.dev_fraction * 10_000:
            splits[pid] = "dev"
    _top_up(splits, "dev", eval_floor(len(pids), cfg.dev_min, cfg.dev_max_share), _dev_bucket)
    return splits


def build_prompts(rows: Iterable[RawPrompt], language: str, cfg: PromptsConfig, run_id: str, languages: list[str]) -> PromptBatch:
    """Validate the rows of one language partition (as `read_source` yields them);
    collapse duplicates; assign the splits (train, dev, eval: `assign_splits`).

    Text is checked for encoding before anything else and cleaned (`clean_text`)
    before the emptiness, length, language and duplicate checks, so language ID and
    ids only ever see valid, cleaned text.
    """
    if language not in languages:
        raise ValueError(f"partition {language!r} is not one of the run's languages {languages}")
    quarantine: list[dict] = []
    unrouted: list[dict] = []
    candidates: list[tuple[RawPrompt, str]] = []
    read = 0
    run_langs = ", ".join(languages)

    def reject(row: RawPrompt, code: str, reason: str, bucket: list[dict] = quarantine) -> None:
        bucket.append({"row_key": utf8_safe(row.row_key), "reason": utf8_safe(reason), "payload": row.payload(), "code": code})

    for row in rows:
        label = normalize_language(row.language)
        if label != language:
            if label in languages:
                raise ValueError(f"row {row.row_key} is labelled {label}, not {language}: read rows with read_source")
            if row.error:
                reject(row, row.error_code or "malformed", row.error, unrouted)
            elif label is None:
                problem = _encoding_problem(row)
                if problem:
                    reject(row, "bad_encoding", problem, unrouted)
                else:
                    reject(row, "unknown_language", f"unknown language code {row.language!r}", unrouted)
            else:
                reject(row, "language_not_in_run", f"language {label} (label {row.language!r}) is not in this run ({run_langs})", unrouted)
            continue
        read += 1
        if row.error:
            reject(row, row.error_code or "malformed", row.error)
            continue
        problem = _encoding_problem(row)
        if problem:
            reject(row, "bad_encoding", problem)
            continue
        if not isinstance(row.text, str):
            if row.text is None:
                reject(row, "empty", "missing prompt text")
            else:
                reject(row, "malformed", f"prompt is not text ({type(row.text).__name__})")
            continue
        text = clean_text(row.text)
        if not text:
            invisible = bool(row.text.strip())
            reject(row, "empty", "prompt has only zero-width or control characters" if invisible else "empty or whitespace-only prompt")
            continue
        if len(text) > cfg.max_chars:
            reject(row, "too_long", f"prompt has {len(text)} characters, over max_chars={cfg.max_chars}")
            continue
        candidates.append((row, text))

    if cfg.language_check.enabled and candidates:
        checkable = [i for i, (_, t) in enumerate(candidates) if len(t) >= cfg.language_check.min_chars]
        detected = contradicts([candidates[i][1] for i in checkable], language, languages, cfg.language_check.margin)
        bad = set()
        for i, det in zip(checkable, detected, strict=True):
            if det is not None:
                bad.add(i)
                reject(candidates[i][0], "language_mismatch", f"detected language {det} contradicts label {language}")
        candidates = [c for i, c in enumerate(candidates) if i not in bad]

    kept: dict[str, dict] = {}
    first_key: dict[str, str] = {}
    for row, text in candidates:
        pid = ids.prompt_id(language, text)
        if pid in kept:
            refs = kept[pid]["references"]
            new = [r for r in row.references if r not in refs]
            refs.extend(new)
            merged = f"; its {len(new)} new reference(s) were merged into it" if new else ""
            reject(row, "duplicate", f"duplicate of prompt {pid} (kept from {first_key[pid]}){merged}")
            continue
        first_key[pid] = utf8_safe(row.row_key)
        kept[pid] = {
            "prompt_id": pid,
            "language": language,
            "text": text,
            "split": "train",  # assigned below, once the language's prompts are known
            "source": row.source,
            "origin": "native",
            "references": list(row.references),
            "run_id": run_id,
        }
    for pid, split in assign_splits(list(kept), cfg).items():
        kept[pid]["split"] = split
    prompts = pl.DataFrame(list(kept.values()), schema=schemas.PROMPTS) if kept else schemas.empty(schemas.PROMPTS)
    counts = {
        "read": read,
        "kept": prompts.height,
        "quarantined": len(quarantine),
        "duplicates": sum(q["code"] == "duplicate" for q in quarantine),
        "unrouted": len(unrouted),
        "train": int((prompts["split"] == "train").sum()) if kept else 0,
        "dev": int((prompts["split"] == "dev").sum()) if kept else 0,
        "eval": int((prompts["split"] == "eval").sum()) if kept else 0,
    }
    if counts["read"] != counts["kept"] + counts["quarantined"]:
        raise AssertionError(f"prompt counts do not reconcile: {counts}")
    return PromptBatch(
        prompts,
        schemas.rejected_frame(quarantine, with_code=True),
        schemas.rejected_frame(unrouted, with_code=True),
        counts,
        owns_unrouted=language == unrouted_owner(languages),
    )


def load_prompts(cfg: PromptsConfig, language: str, run_id: str, languages: list[str]) -> PromptBatch:
    """Read every configured source for the `language` partition and validate the rows."""
    rows = (row for src in cfg.sources for row in read_source(src, language, languages))
    batch = build_prompts(rows, language, cfg, run_id, languages)
    origins = {s.source_label(): s.origin for s in cfg.sources}
    if batch.prompts.height and any(o == "translated" for o in origins.values()):
        batch.prompts = batch.prompts.with_columns(
            pl.col("source").replace_strict(origins, default="native").alias("origin")
        )
    return batch


class LanguageCheck(Strict):
    """Quarantine prompts whose detected language contradicts their label.

    Very short texts are skipped: language ID is unreliable below a few words."""

    enabled: bool = True
    min_chars: int = 25
    margin: float = Field(0.3, ge=0.0, le=1.0)  # how much more confident the detected language must be


class PromptsConfig(Strict):
    sources: list[PromptSource] = Field(default_factory=lambda: [PromptSource(kind="chatterbot")])
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Per language, at least eval_min eval prompts, but never more than eval_max_share of a small
    # language: 1 or 3 eval prompts cannot estimate a win rate (the floor moves the lowest-bucket
    # train prompts to eval).
    eval_min: int = Field(10, ge=0)
    eval_max_share: float = Field(0.2, ge=0.0, lt=1.0)
    # A dev split, taken from what eval leaves: the online rounds judge each new policy on it (never
    # on eval) and stop when it falls. Per language about dev_fraction of the prompts by bucket, at
    # least dev_min, but never more than dev_max_share of a small language (training keeps the rest).
    dev_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    dev_min: int = Field(6, ge=0)
    dev_max_share: float = Field(0.1, ge=0.0, lt=1.0)
    max_chars: int = Field(2000, gt=0)
    language_check: LanguageCheck = Field(default_factory=LanguageCheck)

    @model_validator(mode="after")
    def _train_left(self):
        if self.eval_fraction + self.dev_fraction >= 1 or self.eval_max_share + self.dev_max_share >= 1:
            raise ValueError("eval and dev together take every prompt: keep eval_fraction + dev_fraction and "
                             "eval_max_share + dev_max_share below 1, so some prompts are left to train on")
        return self
