"""The run configuration: one YAML file, validated with pydantic.

The embedded default ships in the package (factory/configs/default.yaml). Select
another with `--config FILE` or the FACTORY_CONFIG env var. Each section's model
lives next to the code it configures; this module composes them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factory.languages import LANGUAGES, validate_code

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class ConfigError(ValueError):
    """A config file that does not validate; the message names every bad key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class LanguageCheck(Strict):
    """Quarantine prompts whose detected language contradicts their label.

    Very short texts are skipped: language ID is unreliable below a few words."""

    enabled: bool = True
    min_chars: int = 25
    margin: float = Field(0.3, ge=0.0, le=1.0)  # how much more confident the detected language must be


class PromptsConfig(Strict):
    sources: list[PromptSource] = Field(default_factory=lambda: [PromptSource(kind="chatterbot")])
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_chars: int = Field(2000, gt=0)
    language_check: LanguageCheck = Field(default_factory=LanguageCheck)


class FactoryConfig(Strict):
    name: str = "embedded-default"
    seed: int = 0
    languages: list[str]
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        for code in value:
            validate_code(code)
        if len(set(value)) != len(value):
            raise ValueError("languages are listed more than once")
        if not value:
            raise ValueError("at least one language is needed")
        return value


def _format(err: ValidationError, path: Path | str) -> str:
    lines = [f"invalid config {path}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<dict>") -> FactoryConfig:
    try:
        return FactoryConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def config_path(path: str | os.PathLike | None = None) -> Path:
    """`path`, else $FACTORY_CONFIG, else the embedded default."""
    raw = path or os.environ.get("FACTORY_CONFIG")
    if raw and str(raw) in {"default", "embedded"}:
        return DEFAULT_CONFIG
    if raw and not Path(raw).exists() and (CONFIG_DIR / f"{raw}.yaml").exists():
        return CONFIG_DIR / f"{raw}.yaml"  # a shipped profile by name, e.g. `tiny`
    return Path(raw) if raw else DEFAULT_CONFIG


def load_config(path: str | os.PathLike | None = None) -> FactoryConfig:
    p = config_path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must be a mapping of sections")
    return parse_config(data, str(p))


@lru_cache(maxsize=8)
def _cached(path: str) -> FactoryConfig:
    return load_config(path)


def active_config() -> FactoryConfig:
    """The config selected by FACTORY_CONFIG (or the default), cached per path."""
    return _cached(str(config_path()))


__all__ = ["FactoryConfig", "ConfigError", "load_config", "active_config", "parse_config", "LANGUAGES"]
