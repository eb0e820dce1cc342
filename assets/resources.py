"""Resources shared by every asset: the warehouse home and the run configuration."""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from assets.config import FactoryConfig, config_path, load_config
from factory.generation.registry import without_api_base_userinfo
from factory.generation.serve import ModelServer
from training.convert import resolve_model
from warehouse.home import resolve_home
from warehouse.housekeeping import check_home_config
from warehouse.store import Warehouse

FORCE_ENV = "FACTORY_FORCE_CONFIG"

# What a teacher is, as opposed to how it is run (batch size, device, server address, retries).
_TEACHER_IDENTITY = {"name", "backend", "model", "sampling"}


def config_identity(cfg: FactoryConfig) -> dict[str, Any]:
    """The keys that decide which rows the per-language tables (prompts, generations, scores,
    selections, pairs) hold and what their ids mean: the languages (the partitions), the prompts
    (prompt_id, split), the teachers, the embedded models behind them, their sampling and k
    (completion_id and its text), and the seed. Two configs that differ here must not write into
    one home: a rerun of some partitions would mix their rows.

    Everything else may change between runs of a home: the Arbiter (scores are cached by its
    checkpoint hash and carry it), scoring, routing, pairs, training, merge, evaluation and
    publish settings (their assets are recomputed from the tables on the next materialization;
    rerun `scores+` over every partition after changing the Arbiter or routing), and how things
    run: devices, threads, batch sizes of inference, retries, timeouts, server addresses."""
    return {
        "seed": cfg.seed,
        "languages": list(cfg.languages),
        "prompts": cfg.prompts.model_dump(mode="json"),
        "teachers": [t.model_dump(mode="json", include=_TEACHER_IDENTITY) for t in cfg.resolved_teachers()],
        "generation.k": cfg.generation.k,
        "models.embedded": cfg.models.embedded.model_dump(mode="json", exclude={"device", "torch_threads"}),
    }


def _forced_by_env() -> bool:
    return os.environ.get(FORCE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class FactoryResource(dg.ConfigurableResource):
    """FACTORY_HOME and the YAML config. Both default to their env vars (FACTORY_HOME,
    FACTORY_CONFIG), else ./factory_home and the embedded default config.

    Every run that uses it first checks the config against the one that built the home
    (`config.json` there): FACTORY_FORCE_CONFIG=1 lets a differing config through and records it."""

    home: str | None = None
    config_path: str | None = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.check_home()

    def warehouse(self) -> Warehouse:
        return Warehouse(self.home)

    def settings(self) -> FactoryConfig:
        return load_config(self.config_path)

    def check_home(self, force: bool = False) -> str | None:
        """Record this config in a new home, or refuse one that differs from the home's in
        config_identity's keys (ConfigMismatch) unless forced. Returns a note on a forced change."""
        cfg = self.settings()
        shown = cfg.model_dump(mode="json")
        shown["teachers"] = [t.model_dump(mode="json") for t in cfg.resolved_teachers()]
        shown = without_api_base_userinfo(shown)  # no password of a server URL in the home's config.json
        return check_home_config(
            resolve_home(self.home), config_identity(cfg), shown, str(config_path(self.config_path).absolute()),
            force=force or _forced_by_env(),
            force_hint=f"add `--force` to `factory run` / `factory demo` (Dagster: {FORCE_ENV}=1)",
        )


class ModelServers(dg.ConfigurableResource):
    """The models a config serves itself (`serve:` entries, `transformers serve` on 127.0.0.1),
    for teachers and judges whose `api_base` is `serve:<name>`. Each server starts the first time
    a step asks for it (steps that never ask pay nothing) and stops when the step ends."""

    _stack: ExitStack | None = PrivateAttr(default=None)
    _running: dict = PrivateAttr(default_factory=dict)

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext):
        with ExitStack() as stack:
            self._stack, self._running = stack, {}
            yield self

    def endpoint(self, cfg: FactoryConfig, name: str, home) -> tuple[str, str]:
        """(api_base, model name to send) of serve entry `name`, starting its server if needed."""
        if self._stack is None:
            raise RuntimeError("ModelServers is used outside a Dagster step")
        if name not in self._running:
            spec = next(s for s in cfg.serve if s.name == name)
            folder = resolve_model(spec.model, home=home)
            server = ModelServer(folder, Warehouse(home).dir("staging", "serve") / f"{name}.log", device=spec.device,
                                 startup_timeout_s=spec.startup_timeout_s, threads=spec.threads)
            self._running[name] = (self._stack.enter_context(server).api_base, folder)
        return self._running[name]
