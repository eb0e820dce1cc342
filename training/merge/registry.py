"""Registry of merge methods: a name maps to a small pure function over tensors.

Every method is called per tensor name as
``fn(tensors, base=..., weights=..., densities=..., **global_params)``, receiving only
the keyword arguments it declares in `params`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method and what it needs."""

    name: str
    fn: Callable
    requires_base: bool
    n_models: int | None  # exact number of merged models (base included for slerp); None = any
    params: tuple[str, ...]  # keyword arguments the function accepts besides `tensors`
    defaults: dict  # method-specific defaults for global params (e.g. normalize, rescale)
    reference: str = ""


METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add `method` to the registry (names are unique)."""
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """The method registered as `name`, with a clear error listing the known names."""
    _load_builtin_methods()
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge_method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def method_names() -> list[str]:
    """Names of all registered methods."""
    _load_builtin_methods()
    return sorted(METHODS)


def _load_builtin_methods() -> None:
    # Importing the method modules registers them; cheap (torch is imported lazily inside them).
    from training.merge import dare, linear, slerp, ties  # noqa: F401
