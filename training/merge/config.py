"""Pydantic models for merges: a mergekit-style YAML (`MergeConfig`) and the run config's `merge`
section (`MergeSettings`, how merged_model merges the cluster models)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from training.merge.registry import METHOD_NAMES, get_method

OutputDtype = Literal["float32", "bfloat16", "float16"]
MethodName = Literal[METHOD_NAMES]  # the registry's names, never listed by hand


class ModelParameters(BaseModel):
    """Per-model parameters: weight (all methods but slerp) and density (ties / dare_*)."""

    model_config = ConfigDict(extra="forbid")

    weight: float | None = None
    density: float | None = Field(default=None, gt=0.0, le=1.0)


class ModelEntry(BaseModel):
    """One input model: a local folder holding a safetensors checkpoint."""

    model_config = ConfigDict(extra="forbid")

    model: str
    parameters: ModelParameters = Field(default_factory=ModelParameters)


class MergeParameters(BaseModel):
    """Top-level parameters; None means the method's own default (as in mergekit)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    t: float | None = None  # slerp: 0 = base model, 1 = the other model
    normalize: bool | None = None  # linear, ties: True; dare_*: False
    rescale: bool | None = None  # dare_*: rescale kept entries by 1/density (True)
    lambda_: float | None = Field(default=None, alias="lambda")  # task-vector methods: scale of the merged delta
    int8_mask: bool | None = None  # accepted for mergekit compatibility; ignored with a warning
    weight: float | None = None  # default weight for models that set none
    density: float | None = Field(default=None, gt=0.0, le=1.0)  # default density for models that set none


class MergeConfig(BaseModel):
    """A mergekit-style merge config (`merge_method`, `base_model`, `models`, `parameters`, `dtype`)."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str = "linear"
    base_model: str | None = None
    models: list[ModelEntry] = Field(min_length=1)
    parameters: MergeParameters = Field(default_factory=MergeParameters)
    dtype: OutputDtype | None = None  # None keeps each input tensor's dtype
    tokenizer_source: str | None = None  # "base", or a model folder; vocabularies must match either way
    max_shard_size: int | str = "5GB"
    seed: int = 0  # DARE's random drops are seeded per (seed, tensor name)
    # Merging is memory-bound and works on cache-sized chunks: one torch thread is fastest,
    # above all on a shared machine (None leaves torch's setting alone).
    threads: int | None = Field(default=1, ge=1)

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        get_method(value)  # a clear error naming the known methods
        return value

    @field_validator("tokenizer_source")
    @classmethod
    def _supported_tokenizer_source(cls, value: str | None) -> str | None:
        if value == "union":
            raise ValueError("tokenizer_source 'union' is not supported: merged models must share one vocabulary")
        return value

    @model_validator(mode="after")
    def _method_requirements(self) -> MergeConfig:
        method = get_method(self.merge_method)
        if method.needs_base and not self.base_model:
            raise ValueError(f"merge_method {self.merge_method!r} needs base_model")
        if self.tokenizer_source == "base" and not self.base_model:
            raise ValueError("tokenizer_source 'base' needs base_model")
        if method.n_models is not None:
            members = {m.model for m in self.models} | ({self.base_model} if self.base_model else set())
            if len(members) != method.n_models:
                raise ValueError(
                    f"merge_method {self.merge_method!r} merges exactly {method.n_models} models "
                    f"(base_model included), got {len(members)}"
                )
        return self


class MergeCandidate(BaseModel):
    """One merge to try on dev: the `merge` section's fields to change (unset ones keep its values)."""

    model_config = ConfigDict(extra="forbid")

    method: MethodName | None = None
    weights: dict[str, float] | None = None
    density: float | None = Field(default=None, gt=0.0, le=1.0)
    t: float | None = None
    seed: int | None = None


class MergeSettings(BaseModel):
    """The run config's `merge` section: how merged_model merges the cluster models.

    `weights` maps a cluster name to its weight (default 1 each); `density` is every model's
    density for the methods that sparsify (`get_method(method).uses_densities`); `t` is slerp's.
    Whether the method needs a base model: `get_method(method).needs_base`.

    `candidates`: merges to try, each a partial override of the fields above; merged_model makes
    every one, judges each against the cluster models on their own languages' dev prompts and keeps
    the best (training/merge_choice.py). Empty: the one merge the fields above describe.
    """

    model_config = ConfigDict(extra="forbid")

    method: MethodName = "linear"  # the method Aya Expanse kept
    weights: dict[str, float] = Field(default_factory=dict)
    density: float = Field(0.5, gt=0.0, le=1.0)
    t: float = 0.5
    seed: int = 0  # DARE's random drops are seeded per (seed, tensor name)
    candidates: list[MergeCandidate] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_candidates(self) -> MergeSettings:
        seen: dict[str, int] = {}
        for i, settings in enumerate(self.to_try()):
            key = candidate_label(settings)
            if key in seen:
                raise ValueError(f"merge candidates {seen[key]} and {i} are the same merge ({key})")
            seen[key] = i
        return self

    def to_try(self) -> list[MergeSettings]:
        """Each candidate as complete settings (without candidates of its own); [] when there are none."""
        plain = self.model_dump(exclude={"candidates"})
        return [MergeSettings.model_validate(plain | c.model_dump(exclude_none=True)) for c in self.candidates]

    def recorded(self) -> dict:
        """The settings as a checkpoint's config records them (no `candidates` key when there are none,
        so a config without candidates gives the same checkpoint id as before they existed)."""
        return self.model_dump(exclude=set() if self.candidates else {"candidates"})


def candidate_label(settings: MergeSettings) -> str:
    """A short name for a merge: its method and the parameters that method uses (e.g. `ties density=0.5`)."""
    method = get_method(settings.method)
    parts = [method.name]
    if method.uses_densities:
        parts.append(f"density={settings.density:g}")
    if "generator" in method.params:
        parts.append(f"seed={settings.seed}")
    if "t" in method.params:
        parts.append(f"t={settings.t:g}")
    if settings.weights and "weights" in method.params:
        parts.append("weights=" + ",".join(f"{k}:{v:g}" for k, v in sorted(settings.weights.items())))
    return " ".join(parts)


def format_validation_error(error: ValidationError, source: str = "merge config") -> str:
    """One line per problem, naming the offending key path (e.g. `models.0.parameters.densty`)."""
    lines = [f"invalid {source}:"]
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read and validate a mergekit-style YAML; raises ValueError naming each bad key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"merge config {path}: {'a folder, not a YAML file' if path.is_dir() else 'no such file'}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"merge config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"invalid merge config {path}: expected a mapping at the top level")
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, f"merge config {path}")) from None
