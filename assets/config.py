"""The run configuration: one YAML file, validated with pydantic.

The embedded default ships in the package (assets/configs/default.yaml). Select
another with `--config FILE` or the FACTORY_CONFIG env var. Each section's model
lives next to the code it configures; this module composes them and adds the
checks that need the whole run (teacher names, languages, prompt sources): every
problem is reported under its key before any work starts.

Relative file paths are resolved against the config file's folder at load time.
A field documented as a file (a jsonl/csv/parquet source) is always local; a
model or hf dataset is local when it starts with `.`, `/` or `~`, or when it
names something next to the config file; otherwise it is left as given (a hub
name, a served model name). Local paths must exist.
"""

from __future__ import annotations

import os
import shlex
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from assets.profiles import CONFIG_DIR, DEFAULT_CONFIG
from factory.arbitrage import ArbitrageConfig
from factory.engines.ray_data import RayConfig
from factory.evaluation import EvaluationConfig
from factory.generation.registry import EMBEDDED_PREFIX, TeacherConfig
from factory.generation.runner import GenerationSettings
from factory.generation.serve import SERVE_PREFIX, ServedModel
from factory.judges import JUDGES
from factory.languages import (
    CLUSTERS,
    LANGUAGES,
    SHARED_LANGUAGES,
    cluster_of,
    describe_clusters,
    own_languages,
    validate_code,
)
from factory.model_sources import GGUF_PREFIX, PKG_PREFIX, check_model_ref
from factory.pairs import PairsConfig
from factory.prompts import PromptsConfig
from factory.scoring.score import ScoringConfig
from factory.settings import Strict
from factory.sources.chatterbot import CHATTERBOT_FOLDERS
from training.config import TrainingConfig
from training.merge import get_method
from training.merge.config import MergeSettings
from training.reward_model import ArbiterConfig
from training.teachers import ModelsConfig
from warehouse.publish import PublishConfig


class ConfigError(ValueError):
    """A config file that does not validate; the message names every bad key."""


class ConfigProblems(ValueError):
    """Problems found once the whole config is parsed, each under the key it is about."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))






































class FactoryConfig(Strict):
    name: str = "embedded-default"
    seed: int = 0
    languages: list[str]
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    teachers: list[TeacherConfig] | None = None  # default: one embedded teacher per cluster
    serve: list[ServedModel] = Field(default_factory=list)  # models this run serves itself (api_base serve:NAME)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    arbiter: ArbiterConfig = Field(default_factory=ArbiterConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    arbitrage: ArbitrageConfig = Field(default_factory=ArbitrageConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    ray: RayConfig = Field(default_factory=RayConfig)  # used where generation/scoring.engine is ray

    def resolved_teachers(self) -> list[TeacherConfig]:
        """The configured teachers, or one embedded teacher per cluster that has at least one
        of the run's languages of its own (a teacher that only saw en/es/fr is no specialist)."""
        if self.teachers:
            return self.teachers
        return [
            TeacherConfig(name=cluster, model=f"embedded:{cluster}")
            for cluster in CLUSTERS
            if set(own_languages(cluster)) & set(self.languages)
        ]

    @model_validator(mode="after")
    def _check_run(self, info: ValidationInfo):
        """Resolve local paths against the config's folder, then the checks that need the whole run."""
        base = Path((info.context or {}).get("base_dir") or Path.cwd()).absolute()
        problems = resolve_paths(self, base)
        for check in RUN_CHECKS:
            problems += check(self)
        if problems:
            raise ConfigProblems(problems)
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


# -- whole-run checks: each returns [(key, message)] ---------------------------------------------

Problems = list[tuple[str, str]]
RELATIVE_NOTE = "(relative paths are resolved against the config file's folder)"
FILE_SOURCES = ("jsonl", "csv", "parquet")  # their `path` is always a local file
# Learning rates, step counts and sizes that only make sense above zero, wherever they appear.
# (max_steps is not here: -1 or 0 means "train `epochs` instead".)
POSITIVE_FIELDS = frozenset({
    "lr", "learning_rate", "epochs", "base_steps", "teacher_steps", "logging_steps", "save_steps",
    "batch_size", "grad_accum", "max_length", "max_new_tokens", "beta", "betas", "max_per_language",
    "max_dialogs_per_language", "timeout_s",
})  # fmt: skip
CHATTERBOT_LANGUAGES = frozenset(CHATTERBOT_FOLDERS.values())


def _local_path(value: str, base: Path, key: str, problems: Problems) -> str:
    """`value` as an absolute path (relative to `base`, `~` expanded); a problem if nothing is there."""
    path = Path(os.path.normpath(base / Path(value).expanduser()))
    if not path.exists():
        problems.append((key, f"no such file {path} {RELATIVE_NOTE}"))
    return str(path)


def _maybe_local(value: str, base: Path, key: str, problems: Problems) -> str:
    """A model or dataset that may be local or a hub / served name: local when it starts with
    `.`, `/` or `~`, or when it exists next to the config file; any other name is left as given.
    `gguf:PATH` resolves PATH the same way; `pkg:` names a file inside an installed package."""
    if value.startswith(GGUF_PREFIX):
        return GGUF_PREFIX + _local_path(value.removeprefix(GGUF_PREFIX), base, key, problems)
    if value.startswith(PKG_PREFIX):
        return value
    if value and (value.startswith((".", "/", "~")) or (base / value).exists()):
        return _local_path(value, base, key, problems)
    return value


def _model_slots(cfg: FactoryConfig) -> list[tuple[str, TeacherConfig]]:
    """Every configured generation backend, with its key."""
    slots = [(f"teachers.{i}", t) for i, t in enumerate(cfg.teachers or [])]
    for key, t in (
        ("scoring.llm_judge_model", cfg.scoring.llm_judge_model),
        ("evaluation.judge_model", cfg.evaluation.judge_model),
        ("pairs.native_vs_translated.translator_model", cfg.pairs.native_vs_translated.translator_model),
    ):
        if t is not None:
            slots.append((key, t))
    return slots


def resolve_paths(cfg: FactoryConfig, base: Path) -> Problems:
    """Make every local path in `cfg` absolute (against `base`, the config's folder); missing ones are problems."""
    problems: Problems = []
    for i, src in enumerate(cfg.prompts.sources):
        key = f"prompts.sources.{i}.path"
        if src.path and src.kind in FILE_SOURCES:
            src.path = _local_path(src.path, base, key, problems)
        elif src.path and src.kind == "hf":
            src.path = _maybe_local(src.path, base, key, problems)
    if cfg.arbiter.model != "embedded" and not cfg.arbiter.model.startswith(EMBEDDED_PREFIX):
        cfg.arbiter.model = _maybe_local(cfg.arbiter.model, base, "arbiter.model", problems)
    if not cfg.training.base_model.startswith(EMBEDDED_PREFIX):
        cfg.training.base_model = _maybe_local(cfg.training.base_model, base, "training.base_model", problems)
    if cfg.evaluation.reward_model:
        cfg.evaluation.reward_model = _maybe_local(
            cfg.evaluation.reward_model, base, "evaluation.reward_model", problems
        )
    if not cfg.arbiter.base_model.startswith(EMBEDDED_PREFIX):
        cfg.arbiter.base_model = _maybe_local(cfg.arbiter.base_model, base, "arbiter.base_model", problems)
    for i, served in enumerate(cfg.serve):
        served.model = _maybe_local(served.model, base, f"serve.{i}.model", problems)
    for key, t in _model_slots(cfg):
        if t.backend != "openai" and not t.embedded:  # an openai `model` is a served name, never a path
            t.model = _maybe_local(t.model, base, f"{key}.model", problems)
    return problems


def _source_refs(cfg: FactoryConfig) -> list[tuple[str, str]]:
    """(key, reference) of every model slot that takes a model reference (folder, gguf:, pkg:)."""
    refs = [("training.base_model", cfg.training.base_model), ("arbiter.base_model", cfg.arbiter.base_model)]
    refs += [(f"{key}.model", t.model) for key, t in _model_slots(cfg) if t.backend != "openai" and not t.embedded]
    refs += [(f"serve.{i}.model", served.model) for i, served in enumerate(cfg.serve)]
    return [(k, r) for k, r in refs if r.startswith((GGUF_PREFIX, PKG_PREFIX))]


def _check_model_sources(cfg: FactoryConfig) -> Problems:
    """gguf:/pkg: references are located and their GGUF header read now (a missing file, a package
    that is not installed, no chat template), before any long work; nothing is converted here."""
    problems: Problems = []
    for key, ref in _source_refs(cfg):
        why = check_model_ref(ref)
        if why:
            problems.append((key, why))
    return problems


def _check_served(cfg: FactoryConfig) -> Problems:
    """`api_base: serve:NAME` names a `serve` entry; serve names are unique."""
    names = [s.name for s in cfg.serve]
    problems: Problems = [("serve", f"served model {n!r} is listed twice") for n in set(names) if names.count(n) > 1]
    for key, t in _model_slots(cfg):
        if t.served is not None:
            problems.append((f"{key}.served", "is set by the run (what a serve: entry serves); leave it out"))
        if t.backend == "openai" and t.api_base.startswith(SERVE_PREFIX):
            name = t.api_base.removeprefix(SERVE_PREFIX)
            if name not in names:
                problems.append((f"{key}.api_base", f"no `serve` entry named {name!r}; have {names or 'none'}"))
        elif t.api_base.startswith(SERVE_PREFIX):
            problems.append((f"{key}.api_base", "serve:NAME is for backend: openai"))
    return problems


def model_source_refs(cfg: FactoryConfig) -> list[str]:
    """The distinct gguf:/pkg: references of a run (converted once by the model_sources asset)."""
    return list(dict.fromkeys(r for _, r in _source_refs(cfg)))


def _check_embedded_names(cfg: FactoryConfig) -> Problems:
    """`embedded:<name>` must name a model the embedded pool builds, where that slot can use one."""
    problems: Problems = []
    known = ", ".join(f"{EMBEDDED_PREFIX}{c}" for c in CLUSTERS)
    for key, t in _model_slots(cfg):
        name = t.model.removeprefix(EMBEDDED_PREFIX)
        if not t.embedded:
            continue
        if key.startswith("teachers.") and name not in CLUSTERS and name != "base":
            msg = f"unknown embedded teacher {t.model!r}; the pool has one per language cluster: {known} (and embedded:base)"
        elif key.startswith("pairs.") and name != "base":
            msg = f"the embedded translator is embedded:base; got {t.model!r}"
        elif key.endswith("judge_model"):
            msg = f"a judge cannot be an embedded model ({t.model!r}): use a model folder or a served model"
        else:
            continue
        problems.append((f"{key}.model", msg))
    for key, ref in (("training.base_model", cfg.training.base_model), ("arbiter.base_model", cfg.arbiter.base_model)):
        if ref.startswith(EMBEDDED_PREFIX) and ref != "embedded:base":
            problems.append((key, f"the embedded base model is embedded:base; got {ref!r}"))
    if cfg.arbiter.model.startswith(EMBEDDED_PREFIX):
        problems.append(("arbiter.model", f"`embedded` (no suffix) trains the tiny Arbiter; got {cfg.arbiter.model!r}"))
    return problems


def _check_teacher_count(cfg: FactoryConfig) -> Problems:
    names = [t.name for t in cfg.resolved_teachers()]
    if len(set(names)) != len(names):
        return [("teachers", f"teacher names must be unique, got {names}")]
    if len(names) >= 2:
        return []
    if cfg.teachers:
        return [("teachers", f"arbitrage needs at least 2 teachers; got {len(names)} ({', '.join(names)})")]
    got = f"1 ({names[0]})" if names else "none"
    return [("languages", (
        f"arbitrage needs at least 2 teachers, and without `teachers:` these languages give {got}.\n"
        "The embedded pool has one teacher per language cluster that has at least one of the run's languages of\n"
        f"its own; {', '.join(SHARED_LANGUAGES)} are shared by every cluster, so they select no teacher. The clusters:\n"
        f"{describe_clusters()}\n"
        "Fix: add a language of another cluster, or configure `teachers:` explicitly."
    ))]  # fmt: skip


def reply_languages(cfg: FactoryConfig) -> set[str]:
    """The run's languages for which some prompt source can give reference replies: the chatterbot
    corpus for its languages; a file or hf source only when it sets `references_column`."""
    run = set(cfg.languages)
    out: set[str] = set()
    for src in cfg.prompts.sources:
        langs = {src.language} if src.language else run
        if src.kind == "chatterbot":
            out |= langs & CHATTERBOT_LANGUAGES
        elif src.references_column:
            out |= langs
    return out & run


REPLIES_HOW = (
    f"the chatterbot corpus has replies for {', '.join(sorted(CHATTERBOT_LANGUAGES))};\n"
    "a jsonl/csv/parquet/hf source has them only with `references_column`"
)


def _check_reply_data(cfg: FactoryConfig) -> Problems:
    """The embedded teachers and Arbiter train on reference replies and the reference judge compares with
    them: refuse a run whose sources cannot supply them (it would fail after the pool is built)."""
    problems: Problems = []
    replies = reply_languages(cfg)
    for i, t in enumerate(cfg.resolved_teachers()):
        cluster = t.model.removeprefix(EMBEDDED_PREFIX)
        if not t.embedded or cluster not in CLUSTERS:
            continue
        key = f"teachers.{i}.model" if cfg.teachers else "languages"
        own_run = [c for c in own_languages(cluster) if c in cfg.languages]
        own = ", ".join(own_run)
        covered = ", ".join(c for c in own_languages(cluster) if c in CHATTERBOT_LANGUAGES)
        if not own:
            msg = (
                f"the embedded teacher {t.model!r} is trained on its cluster's own languages "
                f"({', '.join(own_languages(cluster))}) and the run has none of them"
            )
        elif not set(own_run) & replies:
            fixes = [f"add a source with `references_column` for {own}"]
            if covered and any(src.kind == "chatterbot" for src in cfg.prompts.sources):
                fixes.append(f"use a language of the cluster that the corpus covers ({covered})")
            elif covered:
                fixes.append(f"add the chatterbot source (`- kind: chatterbot`, it has replies in {covered})")
            msg = (
                f"{own} brings in the embedded teacher {t.model!r}. It is trained on the reference replies (the turns\n"
                "after each prompt) that the prompt sources give in its cluster's own languages, and no source gives\n"
                f"replies in {own}: {REPLIES_HOW}.\n"
                f"Fix: {', '.join(fixes)}, or configure `teachers:` explicitly."
            )
        else:
            continue
        problems.append((key, msg))
    if not replies:
        none = f"no prompt source has reference replies in the run's languages:\n{REPLIES_HOW}"
        if cfg.arbiter.model == "embedded":
            problems.append(
                ("arbiter.model", f"the embedded Arbiter is trained on pairs made from replies, and {none}")
            )
        if cfg.evaluation.judge.name == "reference":
            problems.append(("evaluation.judge.name", f"the reference judge compares answers with replies, and {none}"))
    return problems


def _check_names(cfg: FactoryConfig) -> Problems:
    """Names that must match something else in the config: teachers, clusters, judges, pair methods."""
    problems: Problems = []
    teachers = [t.name for t in cfg.resolved_teachers()]
    not_teacher = f"is not a teacher; teachers: {', '.join(teachers)}"
    weak = cfg.pairs.native_vs_translated.weak_teacher
    if weak is not None and weak not in teachers:
        problems.append(("pairs.native_vs_translated.weak_teacher", f"{weak!r} {not_teacher}"))
    routing = cfg.arbitrage.routing
    if routing.single_teacher is not None and routing.single_teacher not in teachers:
        problems.append(("arbitrage.routing.single_teacher", f"{routing.single_teacher!r} {not_teacher}"))
    for lang, teacher in routing.fixed_teachers.items():
        if lang not in LANGUAGES:
            problems.append((f"arbitrage.routing.fixed_teachers.{lang}", f"unknown language code {lang!r}"))
        # only the run's languages are routed; an entry equal to the default (the language's cluster) is
        # the default's behaviour, so a printed config (`factory config`) loads again
        elif lang in cfg.languages and teacher not in teachers and teacher != cluster_of(lang):
            problems.append((f"arbitrage.routing.fixed_teachers.{lang}", f"{teacher!r} {not_teacher}"))
    merged = [c for c in CLUSTERS if set(own_languages(c)) & set(cfg.languages)]  # the cluster models merged
    weight_keys = [(f"merge.weights.{n}", n) for n in cfg.merge.weights] + [
        (f"merge.candidates.{i}.weights.{n}", n) for i, c in enumerate(cfg.merge.candidates) for n in c.weights or {}
    ]
    for key, name in weight_keys:
        if name not in merged:
            what = (
                "no cluster model in this run (none of its own languages is in `languages`)"
                if name in CLUSTERS
                else "unknown cluster"
            )
            problems.append(
                (key, f"{what}; this run merges {', '.join(merged) or 'no cluster models'}")
            )
    for key, settings in [("merge.method", cfg.merge)] + [
        (f"merge.candidates.{i}.method", c) for i, c in enumerate(cfg.merge.to_try())
    ]:
        n_models = get_method(settings.method).n_models
        if n_models is not None and merged and len(merged) != n_models:
            problems.append((key, f"{settings.method!r} merges exactly {n_models} models; this run merges {len(merged)}"))
    if cfg.evaluation.judge.name not in JUDGES:
        problems.append(
            ("evaluation.judge.name", f"unknown judge {cfg.evaluation.judge.name!r}; known: {', '.join(JUDGES)}")
        )
    if cfg.training.dpo_methods == ["native_vs_translated"] and not cfg.pairs.native_vs_translated.enabled:
        problems.append(
            (
                "training.dpo_methods",
                "only native_vs_translated, and pairs.native_vs_translated.enabled is false: no pairs to train on",
            )
        )
    return problems


def _walk(model: BaseModel, prefix: str):
    """(key, field name, value) for every field of `model` and of the models nested in it."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}.{name}" if prefix else name
        yield key, name, value
        items = enumerate(value) if isinstance(value, list) else value.items() if isinstance(value, dict) else []
        for sub, child in [(None, value), *items]:
            if isinstance(child, BaseModel):
                yield from _walk(child, key if sub is None else f"{key}.{sub}")


def _check_positive(cfg: FactoryConfig) -> Problems:
    problems: Problems = []
    for key, name, value in _walk(cfg, ""):
        if name not in POSITIVE_FIELDS:
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int | float) and not isinstance(v, bool) and v <= 0:
                problems.append((key, f"must be positive, got {value}"))
                break
    return problems


RUN_CHECKS = [
    _check_embedded_names, _check_teacher_count, _check_reply_data, _check_names, _check_positive, _check_model_sources,
    _check_served,
]


def _problems(e: dict) -> Problems:
    """A pydantic error as (key, message) lines; a ConfigProblems error carries its own keys."""
    error = (e.get("ctx") or {}).get("error")
    if isinstance(error, ConfigProblems):
        return error.problems
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    return [(key, "unknown key (typo?)" if e["type"] == "extra_forbidden" else e["msg"])]


def _format(err: ValidationError, path: Path | str) -> str:
    lines = [f"invalid config {path}:"]
    for e in err.errors():
        for key, msg in _problems(e):
            lines.append(f"  {key}: " + msg.replace("\n", "\n    "))
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<dict>", base_dir: str | os.PathLike | None = None) -> FactoryConfig:
    """Validate `data`; relative paths in it are resolved against `base_dir` (default: the current folder)."""
    try:
        return FactoryConfig.model_validate(data, context={"base_dir": base_dir})
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


def config_option() -> str:
    """` -c C` for a command printed as a hint when the run's config is not the default: a shipped
    profile by name, else the file's absolute path; '' for the default."""
    path = config_path().resolve()
    if path == DEFAULT_CONFIG.resolve():
        return ""
    return f" -c {shlex.quote(path.stem if path.parent == CONFIG_DIR.resolve() else str(path))}"


def load_config(path: str | os.PathLike | None = None) -> FactoryConfig:
    p = config_path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"config {p} is a folder, not a YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {p} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must be a mapping of sections")
    return parse_config(data, str(p), base_dir=p.absolute().parent)


@lru_cache(maxsize=8)
def _cached(path: str) -> FactoryConfig:
    return load_config(path)


def active_config() -> FactoryConfig:
    """The config selected by FACTORY_CONFIG (or the default), cached per path."""
    return _cached(str(config_path()))


__all__ = ["FactoryConfig", "ConfigError", "load_config", "active_config", "parse_config", "LANGUAGES"]
