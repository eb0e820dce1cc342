"""SLERP: spherical linear interpolation between two models, tensor by tensor (as in mergekit)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DOT_THRESHOLD = 0.9995  # above this |cos|, the arc is numerically a line: interpolate linearly


def slerp_pair(v0: torch.Tensor, v1: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """Interpolate from `v0` (t=0) to `v1` (t=1) along the great circle between their directions.

    The angle is taken between the flattened, normalised tensors; the unnormalised tensors
    are combined with the SLERP coefficients, so norms are interpolated too.
    Near-parallel (or anti-parallel) tensors fall back to linear interpolation.
    """
    import torch

    a, b = v0.float(), v1.float()
    na, nb = a.norm(), b.norm()
    dot = float(torch.dot((a / na.clamp_min(eps)).flatten(), (b / nb.clamp_min(eps)).flatten()))
    if abs(dot) > DOT_THRESHOLD or float(na) < eps or float(nb) < eps:
        return torch.lerp(a, b, t)
    theta_0 = math.acos(max(-1.0, min(1.0, dot)))
    sin_0 = math.sin(theta_0)
    s0 = math.sin(theta_0 * (1.0 - t)) / sin_0
    s1 = math.sin(theta_0 * t) / sin_0
    out = a * s0
    out.add_(b, alpha=s1)
    return out


def slerp(tensors: Sequence[torch.Tensor], t: float = 0.5) -> torch.Tensor:
    """SLERP merge of exactly two tensors: tensors[0] is the base (t=0), tensors[1] the other (t=1)."""
    if len(tensors) != 2:
        raise ValueError(f"slerp merges exactly two models, got {len(tensors)}")
    return slerp_pair(tensors[0], tensors[1], t)
