"""Linear merge: a weighted average of the models' tensors (model soups, Wortsman et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def linear(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    normalize: bool = True,
    inplace: bool = False,
) -> torch.Tensor:
    """sum_i w_i * x_i, divided by sum_i w_i when `normalize` (weights default to 1 each).

    Accumulates in place; with `inplace` a float32 first tensor is reused as the output,
    so memory is just the inputs (the streaming runner owns them).
    """
    import torch

    if not tensors:
        raise ValueError("linear merge needs at least one tensor")
    weights = [1.0] * len(tensors) if weights is None else list(weights)
    if len(weights) != len(tensors):
        raise ValueError(f"linear merge got {len(tensors)} tensors but {len(weights)} weights")
    if normalize:  # fold the normalisation into the weights: one pass fewer
        total = sum(weights)
        if abs(total) < 1e-8:
            raise ValueError("linear merge weights sum to zero; cannot normalize")
        weights = [w / total for w in weights]
    first = tensors[0]
    if inplace and first.dtype == torch.float32:
        out = first.mul_(weights[0])
    else:
        out = first.float() * weights[0]
    for x, w in zip(tensors[1:], weights[1:], strict=True):
        out.add_(x, alpha=w)
    return out
