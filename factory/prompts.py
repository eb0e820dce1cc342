"""Prompt sources and validation: raw rows in, (prompts, quarantine, counts) out.

Reads: `RawPrompt` rows from a source for one language. Writes: the `prompts`
table columns (factory.schemas.PROMPTS) and quarantine rows (row_key, reason,
payload). Counts reconcile: read = kept + quarantined + duplicates.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from factory import ids, schemas
from factory.config import PromptsConfig, PromptSource
from factory.languages import LANGUAGES

# Accepted spellings of language labels in user data -> Aya code.
_ALIASES = {c.lower(): c for c in LANGUAGES} | {
    "zh": "zh-Hans", "zh-cn": "zh-Hans", "zh_cn": "zh-Hans", "zh-sg": "zh-Hans", "zh_hans": "zh-Hans",
    "zh-tw": "zh-Hant", "zh_tw": "zh-Hant", "zh-hk": "zh-Hant", "zh_hant": "zh-Hant",
    "pt-br": "pt", "pt_br": "pt", "pt-pt": "pt", "en-us": "en", "en-gb": "en", "es-419": "es",
}
UNROUTED = "unrouted"  # quarantine partition for rows whose language is not an Aya code


def normalize_language(label) -> str | None:
    """An Aya code for a label such as 'ES', 'zh_TW' or 'pt-BR'; None if unknown."""
    if not isinstance(label, str):
        return None
    return _ALIASES.get(label.strip().lower())


@dataclass
class RawPrompt:
    language: str | None  # the label as found in the data
    text: object
    references: list[str] = field(default_factory=list)
    source: str = ""
    row_key: str = ""  # where it came from: file#line, dataset row, ...
    error: str | None = None  # a read problem found before validation (bad bytes, bad JSON)

    def payload(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, default=str)


@dataclass
class PromptBatch:
    prompts: pl.DataFrame
    quarantine: pl.DataFrame
    unrouted: pl.DataFrame  # quarantine rows for labels that are no Aya language
    counts: dict[str, int]


# -- sources -------------------------------------------------------------------------


def read_source(src: PromptSource, language: str) -> Iterator[RawPrompt]:
    """Rows of `src` labelled `language`, plus rows with an unknown label (for quarantine)."""
    rows = _read_chatterbot(language) if src.kind == "chatterbot" else _read_records(src)
    label = src.source_label()
    taken = 0
    for row in rows:
        row.source = row.source or label
        if src.language is not None:
            row.language = src.language
        code = normalize_language(row.language)
        if code == language or (code is None and row.error is None):
            if code == language and src.max_per_language is not None:
                if taken >= src.max_per_language:
                    continue
                taken += 1
            yield row
        elif code is None and row.error is not None:
            yield row  # an unreadable row: its language is unknown, quarantine it as unrouted


def _read_chatterbot(language: str) -> Iterator[RawPrompt]:
    from factory.sources.chatterbot import iter_raw

    for code, rel, i, conv in iter_raw([language]):
        key = f"chatterbot:{rel}#{i}"
        if i < 0:
            yield RawPrompt(code, None, [], key, key, error=str(conv[0]))
            continue
        turns = ["" if t is None else str(t) for t in conv]
        yield RawPrompt(code, turns[0] if turns else None, [t.strip() for t in turns[1:] if t.strip()], key, key)


def _record(src: PromptSource, rec: dict, key: str) -> RawPrompt:
    if src.prompt_column not in rec:
        return RawPrompt(None, None, [], "", key, error=f"missing column {src.prompt_column!r}")
    lang = rec.get(src.language_column) if src.language_column else None
    refs = rec.get(src.references_column) if src.references_column else None
    if isinstance(refs, str):
        refs = [refs]
    refs = [str(r) for r in (refs or []) if r is not None and str(r).strip()]
    return RawPrompt(lang, rec[src.prompt_column], refs, "", key)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text or None, error or None) for each line, decoding line by line
    so one line of bad bytes does not lose the rest of the file."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                yield n, raw.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                yield n, None, f"undecodable bytes at line {n}: {exc.reason} at byte {exc.start}"


def _read_records(src: PromptSource) -> Iterator[RawPrompt]:
    path = Path(src.path or "")
    name = path.name
    if src.kind == "jsonl":
        for n, line, err in _decoded_lines(path):
            key = f"{name}:{n}"
            if err:
                yield RawPrompt(None, None, [], "", key, error=err)
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawPrompt(None, None, [], "", key, error=f"invalid JSON at line {n}: {exc.msg}")
                continue
            if not isinstance(rec, dict):
                yield RawPrompt(None, None, [], "", key, error=f"line {n} is not a JSON object")
                continue
            yield _record(src, rec, key)
    elif src.kind == "csv":
        good: list[str] = []
        numbers: list[int] = []
        for n, line, err in _decoded_lines(path):
            if err:
                yield RawPrompt(None, None, [], "", f"{name}:{n}", error=err)
            else:
                good.append(line)
                numbers.append(n)
        reader = csv.DictReader(io.StringIO("".join(good)))
        for i, rec in enumerate(reader):
            line_no = numbers[min(i + 1, len(numbers) - 1)] if numbers else i
            yield _record(src, rec, f"{name}:{line_no}")
    elif src.kind == "parquet":
        for i, rec in enumerate(pl.read_parquet(path).iter_rows(named=True)):
            yield _record(src, rec, f"{name}#{i}")
    elif src.kind == "hf":
        for i, rec in enumerate(_load_hf(src)):
            yield _record(src, rec, f"{src.path}[{src.split}]#{i}")


def _load_hf(src: PromptSource):
    """A `datasets` dataset from a saved folder (save_to_disk), a local data folder/file, or a name."""
    import datasets

    path = Path(src.path or "")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        ds = datasets.load_from_disk(str(path))
        return ds[src.split] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(src.path, src.name, split=src.split)


# -- validation ----------------------------------------------------------------------


def _split(pid: str, eval_fraction: float) -> str:
    return "eval" if int(pid[2:], 16) % 10_000 < eval_fraction * 10_000 else "train"


def build_prompts(rows: Iterable[RawPrompt], language: str, cfg: PromptsConfig, run_id: str, languages: list[str]) -> PromptBatch:
    """Validate raw rows of one language; collapse duplicates; assign the eval split."""
    quarantine: list[dict] = []
    unrouted: list[dict] = []
    candidates: list[tuple[RawPrompt, str]] = []
    read = 0

    def reject(row: RawPrompt, reason: str, bucket: list[dict] = quarantine) -> None:
        bucket.append({"row_key": row.row_key, "reason": reason, "payload": row.payload()})

    for row in rows:
        read += 1
        if row.error:
            reject(row, row.error, unrouted if normalize_language(row.language) is None else quarantine)
            continue
        if normalize_language(row.language) is None:
            reject(row, f"unknown language code {row.language!r}", unrouted)
            continue
        if not isinstance(row.text, str):
            reject(row, "missing prompt text" if row.text is None else f"prompt is not text ({type(row.text).__name__})")
            continue
        text = ids.normalize_text(row.text)
        if not text:
            reject(row, "empty or whitespace-only prompt")
            continue
        if len(text) > cfg.max_chars:
            reject(row, f"prompt has {len(text)} characters, over max_chars={cfg.max_chars}")
            continue
        candidates.append((row, text))

    if cfg.language_check.enabled and candidates:
        from factory.langid import contradicts

        checkable = [i for i, (_, t) in enumerate(candidates) if len(t) >= cfg.language_check.min_chars]
        detected = contradicts([candidates[i][1] for i in checkable], language, languages, cfg.language_check.margin)
        bad = set()
        for i, det in zip(checkable, detected, strict=True):
            if det is not None:
                bad.add(i)
                reject(candidates[i][0], f"detected language {det} contradicts label {language}")
        candidates = [c for i, c in enumerate(candidates) if i not in bad]

    kept: dict[str, dict] = {}
    duplicates = 0
    for row, text in candidates:
        pid = ids.prompt_id(language, text)
        if pid in kept:
            duplicates += 1
            refs = kept[pid]["references"]
            refs.extend(r for r in row.references if r not in refs)
            continue
        kept[pid] = {
            "prompt_id": pid,
            "language": language,
            "text": text,
            "split": _split(pid, cfg.eval_fraction),
            "source": row.source,
            "origin": "native",
            "references": list(row.references),
            "run_id": run_id,
        }
    prompts = pl.DataFrame(list(kept.values()), schema=schemas.PROMPTS) if kept else schemas.empty(schemas.PROMPTS)
    qschema = {"row_key": pl.String, "reason": pl.String, "payload": pl.String}
    counts = {
        "read": read - len(unrouted),
        "kept": prompts.height,
        "quarantined": len(quarantine),
        "duplicates": duplicates,
        "unrouted": len(unrouted),
        "train": int((prompts["split"] == "train").sum()) if kept else 0,
        "eval": int((prompts["split"] == "eval").sum()) if kept else 0,
    }
    assert counts["read"] == counts["kept"] + counts["quarantined"] + counts["duplicates"], counts
    return PromptBatch(
        prompts,
        pl.DataFrame(quarantine, schema=qschema),
        pl.DataFrame(unrouted, schema=qschema),
        counts,
    )


def load_prompts(cfg: PromptsConfig, language: str, run_id: str, languages: list[str]) -> PromptBatch:
    """Read every configured source for `language` and validate the rows."""
    rows = (row for src in cfg.sources for row in read_source(src, language))
    batch = build_prompts(rows, language, cfg, run_id, languages)
    origins = {s.source_label(): s.origin for s in cfg.sources}
    if batch.prompts.height and any(o == "translated" for o in origins.values()):
        batch.prompts = batch.prompts.with_columns(
            pl.col("source").replace_strict(origins, default="native").alias("origin")
        )
    return batch
