import json

import polars as pl
import pytest

from assets.config import ConfigError, parse_config
from factory.prompts import PromptsConfig, load_prompts
from factory.sources.config import PromptSource

LANGS = ["en", "es", "ja", "ru"]


def _cfg(*sources, **kw) -> PromptsConfig:
    return PromptsConfig(sources=list(sources), **kw)


def _jsonl(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_jsonl_every_validation_rule_lands_in_quarantine(tmp_path):
    long_text = "hola " * 50
    lines = [
        json.dumps({"prompt": "¿Cómo estás hoy, amigo mío?", "language": "es"}).encode(),
        json.dumps({"prompt": "¿Cómo estás hoy, amigo mío?", "language": "ES"}).encode(),  # duplicate (alias label)
        json.dumps({"prompt": "   ", "language": "es"}).encode(),  # whitespace only
        json.dumps({"prompt": long_text, "language": "es"}).encode(),  # over max_chars
        json.dumps({"prompt": "The weather is lovely in London this afternoon", "language": "es"}).encode(),
        b'{"prompt": "broken json", "language": "es"',  # invalid JSON
        b'{"prompt": "bad \xff\xfe bytes", "language": "es"}',  # undecodable
        json.dumps({"prompt": "bonjour", "language": "xx"}).encode(),  # unknown code
        json.dumps({"prompt": "¿Dónde está la biblioteca?", "language": "es"}).encode(),
    ]
    src = PromptSource(kind="jsonl", path=_jsonl(tmp_path / "p.jsonl", lines))
    batch = load_prompts(_cfg(src, max_chars=100), "es", "run1", LANGS)
    codes = dict(batch.quarantine.select("reason", "code").iter_rows())
    assert any("empty or whitespace-only" in r and c == "empty" for r, c in codes.items())
    assert any("over max_chars=100" in r and c == "too_long" for r, c in codes.items())
    assert any("contradicts label es" in r and c == "language_mismatch" for r, c in codes.items())
    assert any(r.startswith("duplicate of prompt p_") and c == "duplicate" for r, c in codes.items())
    # rows no partition takes are quarantined by the run's first language (en) only
    assert batch.unrouted.height == 0
    unrouted = dict(load_prompts(_cfg(src, max_chars=100), "en", "run1", LANGS).unrouted.select("reason", "code").iter_rows())
    assert unrouted == {
        "invalid JSON at line 6: Expecting ',' delimiter": "malformed",
        "undecodable bytes at line 7: invalid start byte at byte 16": "bad_encoding",
        "unknown language code 'xx'": "unknown_language",
    }
    assert sorted(batch.prompts["text"].to_list()) == ["¿Cómo estás hoy, amigo mío?", "¿Dónde está la biblioteca?"]
    c = batch.counts
    assert c["duplicates"] == 1 and c["kept"] == 2 and c["quarantined"] == 4 and c["read"] == 6
    assert c["read"] == c["kept"] + c["quarantined"]
    # nothing is lost: every rejected row keeps its payload
    assert all(json.loads(p) for p in batch.quarantine["payload"])


def test_csv_parquet_and_fixed_language(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_bytes("question,lang\n\"Привет, как дела?\",ru\nWhat time is it?,en\n".encode() + b"\xff\xfe,ru\n")
    pq_path = tmp_path / "p.parquet"
    pl.DataFrame({"q": ["How are you?", "Where is the station?"]}).write_parquet(pq_path)
    csv_src = PromptSource(kind="csv", path=str(csv_path), prompt_column="question", language_column="lang")
    pq_src = PromptSource(kind="parquet", path=str(pq_path), prompt_column="q", language="en")
    en = load_prompts(_cfg(csv_src, pq_src), "en", "r", LANGS)
    assert sorted(en.prompts["text"]) == ["How are you?", "What time is it?", "Where is the station?"]
    assert set(en.prompts["source"]) == {"csv:p.csv", "parquet:p.parquet"}
    ru = load_prompts(_cfg(csv_src), "ru", "r", LANGS)
    assert ru.prompts["text"].to_list() == ["Привет, как дела?"]
    assert ru.unrouted.height == 0  # en, the run's first language, quarantines unreadable rows
    assert any("undecodable bytes at line 4" in r for r in en.unrouted["reason"])


def test_hf_dataset_source(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"instruction": ["Hola, ¿qué tal?", "Buenos días"], "answer": ["Bien", "Hola"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    src = PromptSource(kind="hf", path=str(tmp_path / "ds"), prompt_column="instruction", language="es", references_column="answer")
    batch = load_prompts(_cfg(src), "es", "r", LANGS)
    assert batch.prompts.height == 2
    assert batch.prompts.sort("text")["references"].to_list() == [["Hola"], ["Bien"]]


def test_chatterbot_ids_stable_and_split_deterministic():
    cfg = _cfg(PromptSource(kind="chatterbot", max_per_language=30), eval_fraction=0.3)
    a = load_prompts(cfg, "ja", "run-a", LANGS).prompts
    b = load_prompts(cfg, "ja", "run-b", LANGS).prompts
    assert a.height > 10
    assert a.select("prompt_id", "split").equals(b.select("prompt_id", "split"))
    assert set(a["split"]) == {"train", "dev", "eval"}
    assert (a["references"].list.len() > 0).mean() > 0.9


def test_config_errors_name_the_bad_key():
    with pytest.raises(ConfigError, match=r"prompts\.sources\.0\.kind"):
        parse_config({"languages": ["en"], "prompts": {"sources": [{"kind": "xml"}]}})
    with pytest.raises(ConfigError, match=r"prompts\.eval_fractoin: unknown key"):
        parse_config({"languages": ["en"], "prompts": {"eval_fractoin": 0.1}})
    with pytest.raises(ConfigError, match="unknown language code 'klingon'"):
        parse_config({"languages": ["klingon"]})


def test_origin_follows_the_source(tmp_path):
    native = tmp_path / "native.jsonl"
    native.write_text(json.dumps({"prompt": "¿Qué hora es?", "language": "es"}) + "\n")
    translated = tmp_path / "translated.jsonl"
    translated.write_text(json.dumps({"prompt": "¿Dónde vives ahora?", "language": "es"}) + "\n")
    cfg = _cfg(PromptSource(kind="jsonl", path=str(native)), PromptSource(kind="jsonl", path=str(translated), origin="translated"))
    got = dict(load_prompts(cfg, "es", "r", LANGS).prompts.select("text", "origin").iter_rows())
    assert got == {"¿Qué hora es?": "native", "¿Dónde vives ahora?": "translated"}


def test_eval_split_has_a_floor_per_language_and_keeps_hash_eval_prompts():
    from factory import ids
    from factory.prompts import _split, assign_splits, eval_floor

    pids = [ids.prompt_id("en", f"prompt number {i}") for i in range(72)]
    cfg = PromptsConfig(eval_fraction=0.02, eval_min=10, eval_max_share=0.2)
    splits = assign_splits(pids, cfg)
    evals = [p for p, s in splits.items() if s == "eval"]
    assert len(evals) == 10 == eval_floor(72, 10, 0.2)
    assert all(splits[p] == "eval" for p in pids if _split(p, 0.02) == "eval")  # the stable ones stay eval
    assert assign_splits(list(reversed(pids)), cfg) == splits  # order does not matter
    # a small language: the floor never takes more than eval_max_share of it
    small = assign_splits(pids[:11], cfg)
    assert sum(s == "eval" for s in small.values()) == max(2, sum(_split(p, 0.02) == "eval" for p in pids[:11]))
    # a large hash share is kept as it is (the floor only adds)
    big = assign_splits(pids, PromptsConfig(eval_fraction=0.5, eval_min=10))
    assert sum(s == "eval" for s in big.values()) == sum(_split(p, 0.5) == "eval" for p in pids) > 10
    # without a floor (and without a dev split) the split is the per-prompt hash alone
    no_dev = {"dev_fraction": 0.0, "dev_min": 0}
    assert assign_splits(pids, PromptsConfig(eval_fraction=0.02, eval_min=0, **no_dev)) == {p: _split(p, 0.02) for p in pids}
