"""Teacher configuration and the one place a backend is built from it.

A teacher is a name, a backend kind and a model. `model: "embedded:<cluster>"`
names a teacher of the built-in pool; its folder is only known once the pool is
built, so the caller passes it as `model_path` (or resolves the config with
`with_model_path`).

`model_identity` says which model a teacher runs, for completion ids: a local
folder or file by the content hash of its weights (wherever it lies), a hub name
by its name, an OpenAI-compatible server by model name and api_base (without any
`user:password@` in it: the identity is stored on every row; requests still use the full URL),
and a server the run starts itself (`api_base: serve:NAME`) also by the weights it serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from factory.generation.base import GenerationBackend, SamplingConfig
from factory.ids import weights_digest

EMBEDDED_PREFIX = "embedded:"


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str  # a folder, an HF name, a served model name, or "embedded:<cluster>"
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batch_size: int = 16  # prompts per generate() call, and per resumable shard
    device: str = "auto"  # transformers: auto | cpu | cuda | cuda:N
    api_base: str = "http://127.0.0.1:8000/v1"  # openai
    api_key_env: str | None = "OPENAI_API_KEY"  # openai: env var holding the key
    max_concurrency: int = 8  # openai
    timeout_s: float = 60.0  # openai
    max_retries: int = 5  # openai
    max_retry_after_s: float = 300.0  # openai: the longest a server's Retry-After is waited for
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.9  # vllm
    # Set by the run, never in a config: for an `api_base: serve:NAME` teacher, what that serve entry
    # serves (`served_identity`: its weights' digest, or the hub name), part of `model_identity`.
    served: str | None = None

    @property
    def embedded(self) -> bool:
        return self.model.startswith(EMBEDDED_PREFIX)


def with_model_path(cfg: TeacherConfig, model_path: str | Path | None = None) -> TeacherConfig:
    """`cfg` with `model` set to what is actually loaded: `model_path` when given (required for
    embedded teachers), else `cfg` unchanged."""
    if model_path is not None:
        return cfg.model_copy(update={"model": str(model_path)})
    if cfg.embedded:
        raise ValueError(
            f"teacher {cfg.name!r}: {cfg.model!r} is an embedded teacher; pass the built pool's model_path"
        )
    return cfg


def without_userinfo(url: str) -> str:
    """`url` without the `user:password@` (or `user@`) of its authority, for what is stored or shown."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def without_api_base_userinfo(obj):
    """`obj` (a config as JSON: dicts, lists, values) with every `api_base` stripped of user-info,
    for a config that is stored or shown."""
    if isinstance(obj, dict):
        return {k: without_userinfo(v) if k == "api_base" and isinstance(v, str) else without_api_base_userinfo(v)
                for k, v in obj.items()}  # fmt: skip
    if isinstance(obj, list):
        return [without_api_base_userinfo(v) for v in obj]
    return obj


def served_identity(folder: str | Path) -> str:
    """What a server started from `folder` (a local folder or file, or a hub name) serves, as
    TeacherConfig.served: the weights' content hash, else the name. Needs no running server."""
    return weights_digest(folder) if Path(folder).exists() else str(folder)


def model_identity(cfg: TeacherConfig, model_path: str | Path | None = None) -> dict:
    """What generates for `cfg`: the backend kind plus the weights' content hash (a local folder or
    file), the served model and api_base (openai; for `serve:NAME`, also what that entry serves:
    `cfg.served`), or the model name (a hub name)."""
    cfg = with_model_path(cfg, model_path)
    if cfg.backend == "openai":
        identity = {"backend": "openai", "model": cfg.model, "api_base": without_userinfo(cfg.api_base).rstrip("/")}
        return {**identity, "served": cfg.served} if cfg.served is not None else identity
    if Path(cfg.model).exists():
        return {"backend": cfg.backend, "weights": weights_digest(cfg.model)}
    return {"backend": cfg.backend, "model": cfg.model}


def make_backend(cfg: TeacherConfig, model_path: str | None = None) -> GenerationBackend:
    """Build the backend `cfg` describes; `model_path` overrides `cfg.model` (required for embedded teachers)."""
    model = with_model_path(cfg, model_path).model
    if cfg.backend == "transformers":
        from factory.generation.transformers_backend import TransformersBackend

        return TransformersBackend(model, name=cfg.name, device=cfg.device, batch_size=cfg.batch_size)
    if cfg.backend == "vllm":
        from factory.generation.vllm_backend import VLLMBackend

        return VLLMBackend(
            model, name=cfg.name, tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
        )  # fmt: skip
    from factory.generation.openai_backend import OpenAIBackend

    return OpenAIBackend(
        model, cfg.api_base, name=cfg.name, api_key_env=cfg.api_key_env, max_concurrency=cfg.max_concurrency,
        timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, max_retry_after_s=cfg.max_retry_after_s,
    )  # fmt: skip


class DeferredBackend:
    """The backend `cfg` describes, built by `make_backend` on the first generate() call: for a
    step whose work was done elsewhere (a Ray job), so that nothing is loaded when nothing is left."""

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.name = cfg.name
        self._backend: GenerationBackend | None = None

    def generate(self, conversations, sampling: SamplingConfig, n: int = 1):
        if self._backend is None:
            self._backend = make_backend(self.cfg)
        return self._backend.generate(conversations, sampling, n=n)

    @property
    def built(self) -> bool:
        return self._backend is not None
