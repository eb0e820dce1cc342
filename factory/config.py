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

from factory.decontam import DecontamConfig
from factory.generation.base import SamplingConfig
from factory.generation.registry import TeacherConfig
from factory.judges import JudgeConfig
from factory.languages import LANGUAGES, validate_code
from factory.pairs import BestWorstConfig, NativeVsTranslatedConfig
from factory.router import RouterConfig
from factory.routing import RoutingConfig
from factory.scoring.fidelity import FidelityConfig
from factory.scoring.llm_judge import LLMJudgeConfig
from factory.winrates import WinRateConfig
from training.dpo import DPOStageConfig
from training.reward_model import RewardModelConfig
from training.sft import SFTStageConfig
from training.teachers import EmbeddedPoolConfig
from warehouse.publish import PublishConfig

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


class GenerationSettings(Strict):
    k: int = Field(2, ge=1)  # samples per prompt per teacher
    retries: int = Field(2, ge=0)  # prompt-by-prompt retries of a failed batch before quarantine


class ModelsConfig(Strict):
    """The embedded tiny models (tokenizer, base, one teacher per cluster), built locally."""

    embedded: EmbeddedPoolConfig = Field(default_factory=EmbeddedPoolConfig)


class ArbiterConfig(Strict):
    """The reward model that scores every completion. `embedded` trains the tiny one with
    TRL's RewardTrainer; anything else is a path or name of a sequence-classification RM."""

    model: str = "embedded"
    train: RewardModelConfig = Field(default_factory=RewardModelConfig)
    batch_size: int = 32
    max_length: int = 256
    device: str = "auto"


class ScoringConfig(Strict):
    """The Arbiter always scores; an LLM judge can score too (its rows are kept alongside, under
    its own scorer name). Routing and pairs use `primary`: the Arbiter unless set otherwise."""

    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    llm_judge: LLMJudgeConfig | None = None  # an extra absolute-score scorer through any backend
    llm_judge_model: TeacherConfig | None = None  # its backend (e.g. an OpenAI-compatible server)
    primary: Literal["arbiter", "llm_judge"] = "arbiter"

    @model_validator(mode="after")
    def _judge(self):
        if (self.llm_judge is None) != (self.llm_judge_model is None):
            raise ValueError("scoring.llm_judge and scoring.llm_judge_model go together")
        if self.primary == "llm_judge" and self.llm_judge is None:
            raise ValueError("scoring.primary: llm_judge needs scoring.llm_judge")
        return self


STRATEGY_NAMES = ["reward_routing", "fixed_routing", "random_routing", "single_teacher", "learned_routing"]


class ArbitrageConfig(Strict):
    strategies: list[str] = Field(default_factory=lambda: list(STRATEGY_NAMES))
    sft_strategy: str = "reward_routing"  # whose selections become sft_data for sft_model
    baseline_strategy: str = "single_teacher"  # sft_model_single_teacher's data
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    # Remove eval-contaminated rows before writing. Off, contaminated rows are written and the
    # blocking `decontaminated` checks fail, stopping training downstream.
    decontaminate: bool = True

    @model_validator(mode="after")
    def _known(self):
        for s in [*self.strategies, self.sft_strategy, self.baseline_strategy]:
            if s not in STRATEGY_NAMES:
                raise ValueError(f"unknown strategy {s!r}; known: {', '.join(STRATEGY_NAMES)}")
        for s in (self.sft_strategy, self.baseline_strategy):
            if s not in self.strategies:
                raise ValueError(f"{s!r} must also be listed in strategies")
        return self


class NativeVsTranslatedSettings(NativeVsTranslatedConfig):
    enabled: bool = True
    weak_teacher: str | None = None  # a teacher name; default: the one with the lowest mean reward
    translator_model: TeacherConfig | None = None  # any backend; default: the embedded base model


class PairsConfig(Strict):
    best_worst: BestWorstConfig = Field(default_factory=BestWorstConfig)
    native_vs_translated: NativeVsTranslatedSettings = Field(default_factory=NativeVsTranslatedSettings)
    min_pairs_per_language: int = 3  # fewer pairs in a language is reported as a warning


class OnlineConfig(Strict):
    """Online iterative DPO: 3 rounds, as in Aya Expanse (beyond 3 gave little and risked reward hacking)."""

    k: int = Field(4, ge=2)  # samples per prompt from the current policy
    betas: list[float] = Field(default_factory=lambda: [0.1, 0.1, 0.1], min_length=3, max_length=3)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.95))
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    batch_size: int = 32


class TrainingConfig(Strict):
    base_model: str = "embedded:base"  # or any causal-LM folder / name
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    dpo_methods: list[str] = Field(default_factory=lambda: ["best_worst", "native_vs_translated"])
    online: OnlineConfig = Field(default_factory=OnlineConfig)


class MergeSettings(Strict):
    """How the cluster models are merged into merged_model (see training/merge)."""

    method: Literal["linear", "slerp", "ties", "dare_ties", "dare_linear"] = "linear"
    weights: dict[str, float] = Field(default_factory=dict)  # cluster -> weight (default equal)
    density: float = 0.5  # ties / dare
    t: float = 0.5  # slerp
    seed: int = 0  # dare


class EvaluationConfig(Strict):
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    winrates: WinRateConfig = Field(default_factory=WinRateConfig)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, top_p=1.0))
    batch_size: int = 32
    judge_model: TeacherConfig | None = None  # the `llm` judge's backend (e.g. an OpenAI-compatible server)
    reward_model: str | None = None  # the `reward` judge's model: an independent RM, never the Arbiter

    @model_validator(mode="after")
    def _judge_inputs(self):
        if self.judge.name == "llm" and self.judge_model is None:
            raise ValueError("judge `llm` needs evaluation.judge_model (a backend config)")
        if self.judge.name == "reward" and not self.reward_model:
            raise ValueError("judge `reward` needs evaluation.reward_model (an independent reward model path)")
        return self


class FactoryConfig(Strict):
    name: str = "embedded-default"
    seed: int = 0
    languages: list[str]
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    teachers: list[TeacherConfig] | None = None  # default: one embedded teacher per cluster
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    arbiter: ArbiterConfig = Field(default_factory=ArbiterConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    arbitrage: ArbitrageConfig = Field(default_factory=ArbitrageConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)

    def resolved_teachers(self) -> list[TeacherConfig]:
        """The configured teachers, or one embedded teacher per cluster that has at least one
        of the run's languages of its own (a teacher that only saw en/es/fr is no specialist)."""
        if self.teachers:
            return self.teachers
        from factory.languages import CLUSTERS, own_languages

        return [
            TeacherConfig(name=cluster, model=f"embedded:{cluster}")
            for cluster in CLUSTERS
            if set(own_languages(cluster)) & set(self.languages)
        ]

    @model_validator(mode="after")
    def _teacher_names(self):
        names = [t.name for t in self.resolved_teachers()]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        if len(names) < 2:
            raise ValueError("arbitrage needs at least 2 teachers; add teachers or languages from more clusters")
        return self

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
