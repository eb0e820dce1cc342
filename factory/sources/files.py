"""File and dataset prompt sources: jsonl, csv, parquet and `datasets` (hf).

Each yields one `RawPrompt` per record. A record that cannot be read (bad bytes,
bad JSON, a broken CSV record, a missing column) is yielded with `error` and
`error_code` set, and with what was read of it as `text`, so the caller can
quarantine it with its content; one bad record never loses the rest of the file.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from factory.sources.raw import RawPrompt, utf8_safe

if TYPE_CHECKING:
    from factory.sources.config import PromptSource


def read_records(src: PromptSource) -> Iterator[RawPrompt]:
    path = Path(src.path or "")
    if src.kind == "jsonl":
        yield from _read_jsonl(src, path)
    elif src.kind == "csv":
        yield from _read_csv(src, path)
    elif src.kind == "parquet":
        for i, rec in enumerate(pl.read_parquet(path).iter_rows(named=True)):
            yield record(src, rec, f"{utf8_safe(path.name)}#{i}")
    elif src.kind == "hf":
        for i, rec in enumerate(_load_hf(src)):
            yield record(src, rec, f"{src.path}[{src.split}]#{i}")
    else:
        raise ValueError(f"{src.kind!r} is not a file or dataset source")


def record(src: PromptSource, rec: dict, key: str) -> RawPrompt:
    """A RawPrompt from one record (a mapping of column -> value)."""
    if src.prompt_column not in rec:
        return RawPrompt(None, rec, [], "", key, error=f"missing column {src.prompt_column!r}", error_code="missing_column")
    lang = rec.get(src.language_column) if src.language_column else None
    refs = rec.get(src.references_column) if src.references_column else None
    if isinstance(refs, str):
        refs = [refs]
    refs = [str(r) for r in (refs or []) if r is not None and str(r).strip()]
    return RawPrompt(lang, rec[src.prompt_column], refs, "", key)


def decoded_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, error or None) for each line of a UTF-8 file.

    Decodes line by line so one line of bad bytes does not lose the rest of the file;
    such a line comes back with its bad bytes as backslash escapes and an error. A UTF-8
    byte-order mark at the start of the file is dropped (Excel writes one).
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield n, raw.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", "backslashreplace")
                yield n, text, f"undecodable bytes at line {n}: {exc.reason} at byte {exc.start}"


def _read_jsonl(src: PromptSource, path: Path) -> Iterator[RawPrompt]:
    name = utf8_safe(path.name)
    for n, line, err in decoded_lines(path):
        key = f"{name}:{n}"
        if err:
            yield RawPrompt(None, line, [], "", key, error=err, error_code="bad_encoding")
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawPrompt(None, line, [], "", key, error=f"invalid JSON at line {n}: {exc.msg}", error_code="malformed")
            continue
        if not isinstance(rec, dict):
            yield RawPrompt(None, line, [], "", key, error=f"line {n} is not a JSON object", error_code="malformed")
            continue
        yield record(src, rec, key)


def csv_records(lines: list[str]) -> Iterator[tuple[int, int, list[str] | None, str | None]]:
    """(first line, last line, fields or None, parse error or None) per CSV record, with
    1-based physical line numbers as the csv reader counts them (a quoted field may span
    lines). Blank lines are skipped.

    The reader is strict, so a quote that is never closed (the reader meets the end of
    the file, or a closing quote followed by text, inside what it took as one field) is
    an error instead of a field that silently swallows the following rows. After an
    error, parsing resumes on the line after the broken record's first line, so the
    rows it would have swallowed are read again as rows.
    """
    pos = 0  # index in `lines` where the current reader starts
    while pos < len(lines):
        reader = csv.reader(iter(lines[pos:]), strict=True)
        while True:
            start = pos + reader.line_num  # index of the record's first line
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start + 1, pos + reader.line_num, None, str(exc)
                pos = start + 1
                break
            if fields:
                yield start + 1, pos + reader.line_num, fields, None


def _read_csv(src: PromptSource, path: Path) -> Iterator[RawPrompt]:
    name = utf8_safe(path.name)
    lines: list[str] = []
    bad: dict[int, str] = {}  # line number -> decoding error
    for n, line, err in decoded_lines(path):
        lines.append(line)
        if err:
            bad[n] = err
    header: list[str] | None = None
    header_problem: str | None = None
    for first, last, fields, parse_error in csv_records(lines):
        key = f"{name}:{first}"
        text = "".join(lines[first - 1 : last])
        encoding = next((bad[n] for n in range(first, last + 1) if n in bad), None)
        if parse_error:
            problem = (
                f"malformed CSV record at lines {first}-{last}: {parse_error} (an unclosed or stray quote "
                f"starting at line {first}?); reading resumed at line {first + 1}"
            )
            code = "malformed"
        elif encoding:
            problem, code = encoding, "bad_encoding"
        elif header is not None and len(fields) != len(header):
            problem, code = f"CSV record at line {first} has {len(fields)} fields, the header has {len(header)}", "malformed"
        else:
            problem = code = None
        if header is None and header_problem is None:
            if problem:  # without a header no record can be read: quarantine them all, saying why
                header_problem = f"the CSV header (line {first}) is unreadable: {problem}"
                yield RawPrompt(None, text, [], "", key, error=header_problem, error_code=code)
            else:
                header = fields
            continue
        if header_problem:
            yield RawPrompt(None, text, [], "", key, error=f"no usable CSV header: {header_problem}", error_code="malformed")
        elif problem:
            yield RawPrompt(None, text, [], "", key, error=problem, error_code=code)
        else:
            yield record(src, dict(zip(header, fields, strict=True)), key)


def _load_hf(src: PromptSource):
    """A `datasets` dataset from a saved folder (save_to_disk), a local data folder/file, or a name."""
    import datasets

    path = Path(src.path or "")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        ds = datasets.load_from_disk(str(path))
        return ds[src.split] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(src.path, src.name, split=src.split)
