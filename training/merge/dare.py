"""DARE (Yu et al. 2023): drop task-vector entries at random and rescale, then merge.

dare_ties elects signs as TIES does; dare_linear sums the weighted task vectors.
Defaults follow mergekit: rescale on, normalize off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from training.merge.registry import MergeMethod, register
from training.merge.sparsify import dare_drop
from training.merge.ties import check_task_inputs, combine_task_vectors, task_vector

if TYPE_CHECKING:
    import torch


def _dare(tensors, base, weights, densities, normalize, lambda_, rescale, generator, consensus, inplace):
    weights, densities = check_task_inputs(tensors, base, weights, densities)
    deltas = [task_vector(x, base, inplace) for x in tensors]
    deltas = [dare_drop(x, d, generator, rescale, inplace=True) for x, d in zip(deltas, densities, strict=True)]
    return combine_task_vectors(deltas, base, weights, consensus, normalize, lambda_, inplace)


def dare_ties(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    weights: Sequence[float] | None = None,
    densities: Sequence[float] | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """DARE drop (p = 1 - density, rescale 1/density) of each task vector, then TIES sign election."""
    return _dare(
        tensors, base, weights, densities, normalize, lambda_, rescale, generator, consensus=True, inplace=inplace
    )


def dare_linear(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    weights: Sequence[float] | None = None,
    densities: Sequence[float] | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """DARE drop of each task vector, then base + weighted sum of the task vectors."""
    return _dare(
        tensors, base, weights, densities, normalize, lambda_, rescale, generator, consensus=False, inplace=inplace
    )


_PARAMS = ("base", "weights", "densities", "normalize", "lambda_", "rescale", "generator", "inplace")
_DEFAULTS = {"normalize": False, "lambda_": 1.0, "rescale": True}
register(MergeMethod("dare_ties", dare_ties, True, None, _PARAMS, _DEFAULTS, "https://arxiv.org/abs/2311.03099"))
register(MergeMethod("dare_linear", dare_linear, True, None, _PARAMS, _DEFAULTS, "https://arxiv.org/abs/2311.03099"))
