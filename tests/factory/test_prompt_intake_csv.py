"""CSV prompt sources: byte-order marks, multi-line fields, broken quotes."""

import json

import pytest

from factory.prompts import LanguageCheck, PromptsConfig, load_prompts
from factory.sources.config import PromptSource
from factory.sources.files import csv_records

RUN = ["en", "es"]


def _load(path, language="en", **src_kw):
    src = PromptSource(kind="csv", path=str(path), **src_kw)
    cfg = PromptsConfig(sources=[src], language_check=LanguageCheck(enabled=False))
    return load_prompts(cfg, language, "run", RUN)


def test_utf8_bom_does_not_hide_the_header(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,language\r\nWhat time is it?,en\r\nHow are you today?,en\r\n")
    batch = _load(path)
    assert sorted(batch.prompts["text"]) == ["How are you today?", "What time is it?"]
    assert batch.quarantine.height == 0 and batch.unrouted.height == 0


def test_jsonl_bom_is_dropped_too(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "What time is it?", "language": "en"}).encode() + b"\n")
    batch = load_prompts(PromptsConfig(sources=[PromptSource(kind="jsonl", path=str(path))]), "en", "run", RUN)
    assert batch.prompts["text"].to_list() == ["What time is it?"]


def test_row_keys_follow_physical_lines_after_a_multiline_field(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        'prompt,language\n'
        '"Write a poem:\nabout the sea\nand the sky",en\n'  # lines 2-4
        '\n'  # line 5: blank
        ',en\n'  # line 6: empty prompt
        'What time is it?,en\n'  # line 7
        'What time is it?,en\n',  # line 8: duplicate
        encoding="utf-8",
    )
    batch = _load(path)
    assert batch.prompts.sort("text")["text"].to_list() == ["What time is it?", "Write a poem:\nabout the sea\nand the sky"]
    q = dict(batch.quarantine.select("row_key", "code").iter_rows())
    assert q == {"p.csv:6": "empty", "p.csv:8": "duplicate"}
    assert "kept from p.csv:7" in batch.quarantine.filter(batch.quarantine["code"] == "duplicate")["reason"][0]


def test_unclosed_quote_is_quarantined_and_the_rows_after_it_are_read(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "prompt,language\n"
        '"Where is the station?,en\n'  # line 2: the quote never closes
        "What time is it?,en\n"
        "How are you today?,en\n",
        encoding="utf-8",
    )
    batch = _load(path)
    assert sorted(batch.prompts["text"]) == ["How are you today?", "What time is it?"]
    bad = batch.unrouted.row(0, named=True)
    assert batch.unrouted.height == 1
    assert (bad["row_key"], bad["code"]) == ("p.csv:2", "malformed")
    assert bad["reason"].startswith("malformed CSV record at lines 2-4: unexpected end of data")
    assert "unclosed or stray quote starting at line 2" in bad["reason"] and "resumed at line 3" in bad["reason"]
    assert json.loads(bad["payload"])["text"].startswith('"Where is the station?,en\nWhat time is it?')
    assert batch.counts["read"] + batch.counts["unrouted"] == 3  # three records in the file, three rows accounted


def test_stray_quote_closed_later_does_not_merge_rows(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "prompt,language\n"
        '"Where is the station?,en\n'  # line 2: unclosed...
        "What time is it?,en\n"
        '"How are you" today?,en\n'  # ...until this quote, followed by text
        "Good morning to you,en\n",
        encoding="utf-8",
    )
    batch = _load(path)
    assert sorted(batch.prompts["text"]) == ["Good morning to you", "What time is it?"]
    assert dict(batch.unrouted.select("row_key", "code").iter_rows()) == {"p.csv:2": "malformed", "p.csv:4": "malformed"}
    assert all("expected after" in r for r in batch.unrouted["reason"])


def test_records_with_the_wrong_number_of_fields_are_quarantined(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,language\nHello, how are you?,en\nGood morning,en\n", encoding="utf-8")
    batch = _load(path)
    assert batch.prompts["text"].to_list() == ["Good morning"]
    assert batch.unrouted["reason"].to_list() == ["CSV record at line 2 has 3 fields, the header has 2"]


def test_a_broken_header_quarantines_every_record(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"prompt,lang\xffuage\nGood morning,en\nHello there,en\n")
    batch = _load(path)
    assert batch.prompts.height == 0
    reasons = batch.unrouted["reason"].to_list()
    assert reasons[0].startswith("the CSV header (line 1) is unreadable: undecodable bytes at line 1")
    assert reasons[1:] == [f"no usable CSV header: {reasons[0]}"] * 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b\n\nc,d\n", [(1, 1, ["a", "b"], None), (3, 3, ["c", "d"], None)]),
        ('a,b\n"x\ny",z\nc,d\n', [(1, 1, ["a", "b"], None), (2, 3, ["x\ny", "z"], None), (4, 4, ["c", "d"], None)]),
        ('a,b\n"x,y\nc,d\n', [(1, 1, ["a", "b"], None), (2, 3, None, "unexpected end of data"), (3, 3, ["c", "d"], None)]),
    ],
)
def test_csv_records_numbers_physical_lines(text, expected):
    assert list(csv_records(text.splitlines(keepends=True))) == expected
