"""Where prompts come from: one entry of the `prompts.sources` list."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from factory.languages import validate_code
from factory.settings import Strict


class PromptSource(Strict):
    """Where prompts come from.

    kind: chatterbot (the embedded corpus), hf (any `datasets` dataset: a local
    folder/file or a hub name), parquet, jsonl, csv.
    """

    kind: Literal["chatterbot", "hf", "parquet", "jsonl", "csv"]
    path: str | None = None  # file / folder / dataset name
    name: str | None = None  # hf: dataset config (subset) name
    split: str = "train"  # hf: which split to read
    prompt_column: str = "prompt"
    language_column: str | None = "language"
    language: str | None = None  # a fixed language for every row (overrides language_column)
    references_column: str | None = None
    max_per_language: int | None = None  # read at most this many rows per language
    label: str | None = None  # the `source` value written on rows (default: derived)
    origin: Literal["native", "translated"] = "native"

    @model_validator(mode="after")
    def _check(self):
        if self.kind != "chatterbot" and not self.path:
            raise ValueError(f"a {self.kind} source needs `path`")
        if self.language is not None:
            validate_code(self.language)
        return self

    def source_label(self) -> str:
        return self.label or (self.kind if self.kind == "chatterbot" else f"{self.kind}:{Path(self.path or '').name}")
