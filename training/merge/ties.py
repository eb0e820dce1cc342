"""TIES merging (Yadav et al. 2023): trim task vectors, elect signs, disjoint mean, add to base.

Also holds the task-vector combination shared with the DARE methods, following mergekit's
generalized task arithmetic: weighted deltas, optional sign consensus, optional normalisation
by the sum of (agreeing) weights, scaled by `lambda_`, added back to the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from training.merge.registry import MergeMethod, register
from training.merge.sparsify import magnitude_prune

if TYPE_CHECKING:
    import torch


def combine_task_vectors(
    deltas: Sequence[torch.Tensor],
    base: torch.Tensor,
    weights: Sequence[float],
    consensus: bool,
    normalize: bool,
    lambda_: float = 1.0,
    inplace: bool = False,
) -> torch.Tensor:
    """base + lambda * sum_i w_i d_i [* agree_i] / (sum_i w_i [* agree_i] if normalize).

    Works chunk by chunk; the float32 `deltas` are overwritten (callers pass their own copies),
    and so is a float32 `base` when `inplace`.
    """
    import torch

    from training.merge.sparsify import CHUNK, chunks

    flats = [d.reshape(-1) for d in deltas]
    out = base.reshape(-1) if inplace and base.dtype == torch.float32 else base.float().reshape(-1).clone()
    n = out.numel()
    total_weight = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
    mixed = torch.empty(min(n, CHUNK), dtype=torch.float32)
    divisor, elected, scratch = torch.empty_like(mixed), torch.empty_like(mixed), torch.empty_like(mixed)
    ones = torch.ones_like(mixed)
    for s, e in chunks(n):
        mix, div, sign, tmp = mixed[: e - s], divisor[: e - s], elected[: e - s], scratch[: e - s]
        parts = [f[s:e] if w == 1.0 else f[s:e].mul_(w) for f, w in zip(flats, weights, strict=True)]
        mix.copy_(parts[0])
        for part in parts[1:]:
            mix.add_(part)
        if consensus:
            # Elected sign +1 where the summed deltas are >= 0 (a -0.0 sum only arises when all are zero).
            torch.copysign(ones[: e - s], mix, out=sign)
            mix.zero_()
            div.zero_()
            for part, w in zip(parts, weights, strict=True):
                # |part| where it has the elected sign, else 0 (float ops: bool masks are slow on CPU)
                torch.nn.functional.threshold_(torch.mul(part, sign, out=tmp), 0.0, 0.0)
                mix.add_(tmp)
                if normalize:
                    div.add_(tmp.sign_(), alpha=w)
            mix.mul_(sign)
            if normalize:
                mix.div_(div.add_(div == 0))
        elif normalize:
            mix.div_(total_weight)
        if lambda_ != 1.0:
            mix.mul_(lambda_)
        out[s:e].add_(mix)
    return out.view(base.shape)


def task_vector(x: torch.Tensor, base: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x - base in float32; with `inplace`, a float32 `x` is overwritten instead of copied."""
    import torch

    if inplace and x.dtype == base.dtype == torch.float32:
        return x.sub_(base)
    return x.float() - base.float()


def check_task_inputs(tensors: Sequence, base, weights, densities) -> tuple[list[float], list[float]]:
    """Validate and default the per-model weights and densities of a task-vector method."""
    if base is None:
        raise ValueError("this merge method needs a base_model")
    if not tensors:
        raise ValueError("no models to merge besides the base")
    weights = [1.0] * len(tensors) if weights is None else list(weights)
    densities = [1.0] * len(tensors) if densities is None else list(densities)
    if len(weights) != len(tensors) or len(densities) != len(tensors):
        raise ValueError(f"got {len(tensors)} tensors, {len(weights)} weights and {len(densities)} densities")
    for d in densities:
        if not 0.0 < d <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {d}")
    return weights, densities


def ties(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    weights: Sequence[float] | None = None,
    densities: Sequence[float] | None = None,
    normalize: bool = True,
    lambda_: float = 1.0,
    inplace: bool = False,
) -> torch.Tensor:
    """TIES: d_i = trim(x_i - base, density_i); elect sign; weighted mean of agreeing entries; add to base.

    With `inplace`, the input tensors are reused as scratch space (the streaming runner owns them).
    """
    weights, densities = check_task_inputs(tensors, base, weights, densities)
    deltas = [task_vector(x, base, inplace) for x in tensors]
    deltas = [magnitude_prune(d, density, inplace=True) for d, density in zip(deltas, densities, strict=True)]
    return combine_task_vectors(deltas, base, weights, True, normalize, lambda_, inplace)


register(
    MergeMethod(
        name="ties",
        fn=ties,
        requires_base=True,
        n_models=None,
        params=("base", "weights", "densities", "normalize", "lambda_", "inplace"),
        defaults={"normalize": True, "lambda_": 1.0},
        reference="https://arxiv.org/abs/2306.01708",
    )
)
