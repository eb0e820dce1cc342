"""Shared fixtures: a small hand-made scored table and tiny-model helpers."""

from __future__ import annotations

import polars as pl
import pytest

from factory.ids import completion_id, prompt_id

SAMPLING = {"temperature": 0.8}
PROMPT_TEXTS = {
    "de": "Wie ist das Wetter heute?",
    "ja": "今日の天気はどうですか",
    "ru": "Какая сегодня погода?",
}


def scored_rows(rows: list[tuple]) -> pl.DataFrame:
    """rows: (language, teacher, sample_index, reward, language_match, text); prompt by language."""
    out = []
    for lang, teacher, idx, reward, match, text in rows:
        pid = prompt_id(lang, PROMPT_TEXTS[lang])
        out.append(
            {
                "prompt_id": pid,
                "language": lang,
                "completion_id": completion_id(pid, teacher, SAMPLING, idx),
                "teacher": teacher,
                "sample_index": idx,
                "text": text,
                "reward": reward,
                "reward_z": reward,
                "language_match": match,
            }
        )
    return pl.DataFrame(out, schema_overrides={"sample_index": pl.Int32, "reward": pl.Float64})


@pytest.fixture
def scored() -> pl.DataFrame:
    return scored_rows(
        [
            ("de", "west_european", 0, 2.0, True, "Sonnig und warm."),
            ("de", "west_european", 1, 3.0, True, "Es ist heute sonnig."),
            ("de", "east_european", 0, 5.0, False, "Солнечно."),
            ("de", "east_asian", 0, 1.0, True, "Gut."),
            ("ja", "east_asian", 0, 1.0, True, "晴れです"),
            ("ja", "west_european", 0, 1.0, True, "今日は晴れ"),
            ("ja", "east_european", 0, -4.0, True, "はい"),
            ("ru", "east_european", 0, 0.5, False, "Sunny."),
            ("ru", "west_european", 0, None, True, "Солнечно."),
        ]
    )


@pytest.fixture
def prompts() -> pl.DataFrame:
    return pl.DataFrame(
        [{"prompt_id": prompt_id(lang, text), "language": lang, "text": text} for lang, text in PROMPT_TEXTS.items()]
    )


@pytest.fixture(scope="session")
def tiny_model_factory(tiny_lm):
    """Build (tokenizer, model) from a few texts: a ~30k-parameter Llama, fast on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def build(texts: list[str]):
        folder = tiny_lm(texts * 3, max_length=64, max_positions=64)
        return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)

    return build


@pytest.fixture
def make_scored():
    return scored_rows
