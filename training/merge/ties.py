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

    Works chunk by chunk on numpy views of the tensors (on one thread numpy's elementwise and
    boolean ops cost about half of torch's per call at this chunk size); the float32 `deltas`
    are overwritten (callers pass their own copies), and so is a float32 `base` when `inplace`.
    """
    import numpy as np
    import torch

    from training.merge.sparsify import CHUNK, chunks

    flats = [d.detach().reshape(-1).numpy() for d in deltas]
    if any(f.dtype != np.float32 for f in flats):
        raise TypeError("task vectors must be float32")
    out_t = base.reshape(-1) if inplace and base.dtype == torch.float32 else base.float().reshape(-1).clone()
    out = out_t.numpy()
    n = out.size
    total_weight = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
    size = min(n, CHUNK)
    mixed, divisor, elected, scratch = (np.empty(size, dtype=np.float32) for _ in range(4))
    agree = np.empty(size, dtype=bool)
    for s, e in chunks(n):
        m = e - s
        mix, div, sign, tmp, ag = mixed[:m], divisor[:m], elected[:m], scratch[:m], agree[:m]
        parts = [
            f[s:e] if w == 1.0 else np.multiply(f[s:e], w, out=f[s:e]) for f, w in zip(flats, weights, strict=True)
        ]
        np.copyto(mix, parts[0])
        for part in parts[1:]:
            np.add(mix, part, out=mix)
        if consensus:
            # Elected sign +1 where the summed deltas are >= 0 (a -0.0 sum only arises when all are zero).
            np.copysign(1.0, mix, out=sign)
            mix.fill(0.0)
            if normalize:
                div.fill(0.0)
            for part, w in zip(parts, weights, strict=True):
                np.multiply(part, sign, out=tmp)  # |part| where it has the elected sign, else <= 0
                np.maximum(tmp, 0.0, out=tmp)
                np.add(mix, tmp, out=mix)
                if normalize:
                    np.greater(tmp, 0.0, out=ag)
                    if w == 1.0:
                        np.add(div, ag, out=div)
                    else:
                        np.add(div, np.multiply(ag, w, out=tmp), out=div)
            np.multiply(mix, sign, out=mix)
            if normalize:
                np.add(div, np.equal(div, 0.0, out=ag), out=div)
                np.divide(mix, div, out=mix)
        elif normalize:
            np.divide(mix, total_weight, out=mix)
        if lambda_ != 1.0:
            np.multiply(mix, lambda_, out=mix)
        np.add(out[s:e], mix, out=out[s:e])
    return out_t.view(base.shape)


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
