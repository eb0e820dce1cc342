"""Prompt intake: every row read is kept or quarantined exactly once, with a code."""

import json

import polars as pl
import pytest

from factory.config import PromptsConfig, PromptSource
from factory.langid import detect_many
from factory.prompts import RawPrompt, build_prompts, load_prompts

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
    assert c == {"read": 4, "kept": 2, "quarantined": 2, "duplicates": 2, "unrouted": 0, "train": c["train"], "eval": c["eval"]}
    assert c["read"] == batch.prompts.height + batch.quarantine.height


def test_build_prompts_refuses_rows_of_another_partition():
    rows = [RawPrompt("en", "Hello there", row_key="x:1")]
    with pytest.raises(ValueError, match="labelled en, not es"):
        build_prompts(rows, "es", _cfg(), "run", RUN)
    with pytest.raises(ValueError, match="'fr' is not one of the run's languages"):
        build_prompts([], "fr", _cfg(), "run", RUN)


def test_language_id_does_not_fail_a_batch_on_a_lone_surrogate():
    assert detect_many(["¿Dónde está la biblioteca municipal?", "bad \ud800 ¿dónde está la biblioteca?"], ["en", "es"]) == ["es", "es"]
