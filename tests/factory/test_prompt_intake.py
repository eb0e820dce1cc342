"""Prompt intake: every row read is kept or quarantined exactly once, with a code."""

import json

import polars as pl
import pytest

from factory.langid import detect_many
from factory.prompts import LanguageCheck, PromptsConfig, RawPrompt, build_prompts, clean_text, load_prompts
from factory.sources.config import PromptSource

RUN = ["en", "es"]


def _cfg(*sources, **kw) -> PromptsConfig:
    return PromptsConfig(sources=list(sources), **kw)


def _jsonl(path, rows: list, **kw) -> PromptSource:
    """A jsonl source; a str row is written as is (for escapes json.dumps would not write)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return PromptSource(kind="jsonl", path=str(path), **kw)


def _all_partitions(cfg: PromptsConfig, langs: list[str]) -> dict:
    return {lang: load_prompts(cfg, lang, "run", langs) for lang in langs}


def test_language_outside_the_run_is_quarantined_once_by_the_first_language(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Where is the train station?", "language": "en"},
        {"prompt": "¿Dónde está la estación de tren?", "language": "es"},
        {"prompt": "Où est la gare, s'il vous plaît ?", "language": "fr"},
        {"prompt": "火车站在哪里？", "language": "zh_CN"},
    ])
    batches = _all_partitions(_cfg(src), RUN)
    en, es = batches["en"], batches["es"]
    assert en.owns_unrouted and not es.owns_unrouted
    assert es.unrouted.height == 0  # counted once, not once per partition
    assert en.unrouted["code"].to_list() == ["language_not_in_run"] * 2
    assert en.unrouted["row_key"].to_list() == ["p.jsonl:3", "p.jsonl:4"]
    assert en.unrouted["reason"].to_list() == [
        "language fr (label 'fr') is not in this run (en, es)",
        "language zh-Hans (label 'zh_CN') is not in this run (en, es)",
    ]
    assert json.loads(en.unrouted["payload"][1])["text"] == "火车站在哪里？"
    # every line of the file is accounted for exactly once across the partitions
    assert sum(b.counts["read"] + b.counts["unrouted"] for b in batches.values()) == 4
    assert en.counts["unrouted"] == 2 and es.counts["unrouted"] == 0


def test_a_source_with_a_fixed_language_outside_the_run_is_quarantined_not_dropped(tmp_path):
    src = _jsonl(tmp_path / "fr.jsonl", [{"prompt": "Bonjour, comment ça va ?"}, {"prompt": "Quelle heure est-il ?"}], language="fr")
    batches = _all_partitions(_cfg(src), RUN)
    assert batches["en"].unrouted["code"].to_list() == ["language_not_in_run"] * 2
    assert batches["en"].counts["read"] == batches["es"].counts["read"] == 0


def test_duplicates_are_quarantined_naming_the_kept_prompt(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "¿Qué hora es?", "language": "es", "answer": "Son las tres."},
        {"prompt": "  ¿Qué hora es?  ", "language": "ES", "answer": "Las tres en punto."},
        {"prompt": "¿Qué hora es?", "language": "es", "answer": "Son las tres."},
        {"prompt": "¿Dónde vives?", "language": "es"},
    ], references_column="answer")
    batch = load_prompts(_cfg(src), "es", "run", RUN)
    kept = batch.prompts.filter(pl.col("text") == "¿Qué hora es?").row(0, named=True)
    assert kept["references"] == ["Son las tres.", "Las tres en punto."]
    dup = batch.quarantine.filter(pl.col("code") == "duplicate")
    assert dup["row_key"].to_list() == ["p.jsonl:2", "p.jsonl:3"]
    assert dup["reason"].to_list() == [
        f"duplicate of prompt {kept['prompt_id']} (kept from p.jsonl:1); its 1 new reference(s) were merged into it",
        f"duplicate of prompt {kept['prompt_id']} (kept from p.jsonl:1)",
    ]
    c = batch.counts
    assert c == {"read": 4, "kept": 2, "quarantined": 2, "duplicates": 2, "unrouted": 0, "train": c["train"], "dev": c["dev"], "eval": c["eval"]}
    assert c["read"] == batch.prompts.height + batch.quarantine.height


def test_zero_width_and_control_characters_are_removed_before_emptiness_and_dedup(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "\u200b\u200c\u200d\u2060\ufeff", "language": "es"},  # zero-width only
        {"prompt": "\x00\x07\x1b\x7f", "language": "es"},  # control characters only
        {"prompt": " \u200b \t\n", "language": "es"},  # whitespace and zero-width
        {"prompt": "Hola amigo, ¿cómo estás?", "language": "es"},
        {"prompt": "\ufeffHola\u200b amigo,\x07 ¿cómo estás?\u200d", "language": "es"},  # same prompt, dirty
        {"prompt": "Línea uno\r\nLínea\tdos", "language": "es"},
    ])
    batch = load_prompts(_cfg(src, language_check=LanguageCheck(enabled=False)), "es", "run", RUN)
    assert sorted(batch.prompts["text"]) == ["Hola amigo, ¿cómo estás?", "Línea uno\nLínea\tdos"]
    q = {k: (c, r) for k, c, r in batch.quarantine.select("row_key", "code", "reason").iter_rows()}
    assert q["p.jsonl:1"] == ("empty", "prompt has only zero-width or control characters")
    assert q["p.jsonl:2"] == ("empty", "prompt has only zero-width or control characters")
    assert q["p.jsonl:3"][0] == "empty"
    assert q["p.jsonl:5"][0] == "duplicate"
    assert batch.counts["read"] == 6 == batch.prompts.height + batch.quarantine.height


def test_clean_text_keeps_joiners_that_spell_words():
    assert clean_text("می\u200cخواهم") == "می\u200cخواهم"  # Persian: the ZWNJ is spelling
    assert clean_text("👩\u200d💻") == "👩\u200d💻"  # an emoji sequence
    assert clean_text("\u200dhola\u200c \u200cmundo\u200d") == "hola mundo"
    assert clean_text("a\rb\x0bc\x85d") == "a\nb\nc\nd"
    assert clean_text("e\u0301") == "\u00e9"  # still NFC


def test_lone_surrogates_are_quarantined_before_language_id_and_ids(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", [
        '{"prompt": "bad \\ud800 text, ¿qué tal estás hoy, amiga mía?", "language": "es"}',
        '{"prompt": "¿Qué tal estás hoy, amiga mía?", "language": "es", "answer": "Bien \\udfff"}',
        '{"prompt": "¿Dónde está la biblioteca municipal?", "language": "es"}',
        '{"prompt": "hola", "language": "e\\udc80s"}',
    ], references_column="answer")
    cfg = _cfg(src)
    assert cfg.language_check.enabled  # language ID runs on the rows that are kept
    batch = load_prompts(cfg, "es", "run", RUN)
    assert batch.prompts["text"].to_list() == ["¿Dónde está la biblioteca municipal?"]
    assert batch.quarantine["code"].to_list() == ["bad_encoding", "bad_encoding"]
    assert batch.quarantine["reason"].to_list() == [
        "prompt text is not valid Unicode: lone surrogate U+D800 at character 4, which has no UTF-8 encoding",
        "reference 0 is not valid Unicode: lone surrogate U+DFFF at character 5, which has no UTF-8 encoding",
    ]
    # the payload keeps the row (escaped) and can be stored
    assert json.loads(batch.quarantine["payload"][0])["text"].startswith("bad \ud800 text")
    batch.quarantine.write_parquet(tmp_path / "q.parquet")
    unrouted = load_prompts(cfg, "en", "run", RUN).unrouted
    assert unrouted["code"].to_list() == ["bad_encoding"]
    assert unrouted["reason"][0].startswith("language label is not valid Unicode: lone surrogate U+DC80")
    unrouted.write_parquet(tmp_path / "u.parquet")


def test_build_prompts_refuses_rows_of_another_partition():
    rows = [RawPrompt("en", "Hello there", row_key="x:1")]
    with pytest.raises(ValueError, match="labelled en, not es"):
        build_prompts(rows, "es", _cfg(), "run", RUN)
    with pytest.raises(ValueError, match="'fr' is not one of the run's languages"):
        build_prompts([], "fr", _cfg(), "run", RUN)


def test_language_id_does_not_fail_a_batch_on_a_lone_surrogate():
    assert detect_many(["¿Dónde está la biblioteca municipal?", "bad \ud800 ¿dónde está la biblioteca?"], ["en", "es"]) == ["es", "es"]
