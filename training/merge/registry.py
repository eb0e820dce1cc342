"""The merge methods by name: a static table over the method modules (mergekit's registry.py style).

The method modules define plain functions over tensors and import nothing from here; this
module imports them and names them, so there is no import circle and the table is the one
list of methods (config Literals, CLI help and docs derive from it).

Every method is called per tensor name as ``fn(tensors, base=..., weights=..., densities=...,
**global_params)``, receiving only the keyword arguments it declares in `params`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from training.merge.linear import linear
from training.merge.slerp import slerp
from training.merge.task_arithmetic import task_arithmetic

_TASK_PARAMS = ("base", "weights", "densities", "normalize", "lambda_", "inplace")
_DARE_PARAMS = (*_TASK_PARAMS, "rescale", "generator")


@dataclass(frozen=True)
class MergeMethod:
    """A named merge method and what it needs."""

    name: str
    fn: Callable
    needs_base: bool  # merges task vectors x_i - base: callers must pass a base model
    n_models: int | None  # exact number of merged models (base included for slerp); None = any
    params: tuple[str, ...]  # keyword arguments the function accepts besides `tensors`
    defaults: dict = field(default_factory=dict)  # method-specific defaults (e.g. normalize, rescale)
    reference: str = ""

    @property
    def uses_densities(self) -> bool:
        """Whether per-model densities (sparsification) mean anything to this method."""
        return "densities" in self.params

    def __call__(self, tensors, *args, **kwargs):
        """Call `fn` with this method's defaults under the given arguments."""
        return self.fn(tensors, *args, **{**self.defaults, **kwargs})


def _task_arithmetic(name: str, sparsification: str | None, consensus: bool, normalize: bool, reference: str):
    """A generalized task-arithmetic method (defaults as in mergekit's registry)."""
    dare = sparsification == "random"
    return MergeMethod(
        name=name,
        fn=partial(task_arithmetic, sparsification=sparsification, consensus=consensus),
        needs_base=True,
        n_models=None,
        params=_DARE_PARAMS if dare else _TASK_PARAMS,
        defaults={"normalize": normalize, "lambda_": 1.0, **({"rescale": True} if dare else {})},
        reference=reference,
    )


_ALL = (
    MergeMethod(
        "linear",
        linear,
        False,
        None,
        ("weights", "normalize", "inplace"),
        {"normalize": True},
        "https://arxiv.org/abs/2203.05482",
    ),
    MergeMethod("slerp", slerp, False, 2, ("t",), {"t": 0.5}, "https://github.com/arcee-ai/mergekit (slerp)"),
    _task_arithmetic("ties", "magnitude", True, True, "https://arxiv.org/abs/2306.01708"),
    _task_arithmetic("dare_ties", "random", True, False, "https://arxiv.org/abs/2311.03099"),
    _task_arithmetic("dare_linear", "random", False, False, "https://arxiv.org/abs/2311.03099"),
)
METHODS: dict[str, MergeMethod] = {m.name: m for m in _ALL}
METHOD_NAMES: tuple[str, ...] = tuple(sorted(METHODS))


def get_method(name: str) -> MergeMethod:
    """The method named `name`, with a clear error listing the known names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge_method {name!r}; known: {', '.join(METHOD_NAMES)}") from None


def method_names() -> list[str]:
    """Names of all methods, sorted."""
    return list(METHOD_NAMES)
