"""The base of every config section: unknown keys are errors, not silently ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Engine = Literal["in_process", "ray"]  # where the per-row work runs: the step's process, or a Ray job (`ray:`)
