"""Generalized task arithmetic (mergekit's `generalized_task_arithmetic`): TIES, DARE-TIES and
DARE-linear are one function, told apart by how task vectors are sparsified and whether signs
must agree.

    merged = base + lambda * sum_i w_i s_i(x_i - base) [* agree_i]  /  (sum_i w_i [* agree_i] if normalize)

- `sparsification`: "magnitude" keeps each task vector's int(density * n) largest-magnitude
  entries (TIES's trim; entries tied at the threshold are kept in order of position),
  "random" drops each entry with probability 1 - density and rescales survivors by 1/density
  (DARE), None keeps everything.
- `consensus`: TIES's sign election. The elected sign is the sign of sum_i w_i d_i; only the
  entries that have it count (agree_i), in the sum and, with `normalize`, in the divisor.

The registry (training/merge/registry.py) names the combinations and their defaults.

Speed: on one thread the cost is the number of numpy calls over each chunk, so the magnitude
path makes two chunked passes (64Ki entries, cache-sized) and never a whole-tensor temporary.
The first finds every model's threshold (`sparsify.kth_largest_magnitudes`; with `inplace` it
leaves x_i - base in x_i's buffer); the second trims and combines each chunk while it is in
cache. Sign election works on the float bit patterns (xor with the elected sign bit, int32 max
against zeros): numpy's float `maximum(x, 0.0)` and `copysign` cost 6-8x an add on one thread.
Every step computes the same float32 values, in the same order, as the direct definition
(tests/training/merge/reference.py), so outputs are bit-identical to the straightforward version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from training.merge.sparsify import (
    CHUNK,
    chunks,
    dare_drop,
    float32_array,
    kth_largest_magnitudes,
    tied_positions_to_drop,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

Sparsification = Literal["magnitude", "random"]
SPARSIFICATIONS: tuple[str, ...] = ("magnitude", "random")
_SIGN = 0x80000000


def task_arithmetic(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    weights: Sequence[float] | None = None,
    densities: Sequence[float] | None = None,
    *,
    sparsification: Sparsification | None = None,
    consensus: bool = False,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Merge the task vectors `tensors[i] - base` into `base` (see the module docstring).

    `rescale` and `generator` apply to "random" sparsification only. With `inplace`, the
    inputs are reused as scratch space and a float32 `base` becomes the output (the streaming
    runner owns them); otherwise no input is modified.
    """
    import torch

    weights, densities = check_task_inputs(tensors, base, weights, densities)
    if sparsification is not None and sparsification not in SPARSIFICATIONS:
        raise ValueError(f"unknown sparsification {sparsification!r}; known: {', '.join(SPARSIFICATIONS)} or None")
    out = base.reshape(-1) if inplace and base.dtype == torch.float32 else base.float().reshape(-1).clone()
    if sparsification == "random":
        # DARE's mask is drawn for the whole tensor (one random stream per tensor): store the deltas.
        deltas = [
            dare_drop(task_vector(x, base, inplace), d, generator, rescale, inplace=True)
            for x, d in zip(tensors, densities, strict=True)
        ]
        combine_task_vectors(out, weights, consensus, normalize, lambda_, deltas=[float32_array(d) for d in deltas])
        return out.view(base.shape)
    xs = [float32_array(x) for x in tensors]
    b = float32_array(base)  # with inplace, the same memory as out: combine reads each chunk before writing it
    if sparsification == "magnitude":
        # With inplace the threshold pass leaves x_i - base in x_i's memory, sparing the combining pass a subtraction.
        trims = magnitude_trims(xs, b, densities, store_deltas=inplace)
        deltas_stored = inplace
    else:
        trims, deltas_stored = [_KEEP] * len(xs), False
    combine_task_vectors(out, weights, consensus, normalize, lambda_, inputs=(xs, None if deltas_stored else b, trims))
    return out.view(base.shape)


@dataclass(frozen=True)
class Trim:
    """How one task vector is trimmed: keep |d| >= threshold (None: keep all), minus `drop`
    (positions of entries tied at the threshold beyond the k kept); `zero`: keep nothing."""

    threshold: float | None = None
    drop: np.ndarray | None = None
    zero: bool = False


_KEEP = Trim()


def magnitude_trims(
    xs: list[np.ndarray], base: np.ndarray, densities: Sequence[float], store_deltas: bool = False
) -> list[Trim]:
    """Each task vector's TIES trim: keep its int(density * n) largest |x_i - base| entries.

    With `store_deltas`, every x_i is overwritten with x_i - base on the way."""
    import numpy as np

    n = base.size
    trims: list[Trim] = [_KEEP] * len(xs)
    todo = []
    for i, density in enumerate(densities):
        k = int(density * n)
        if density < 1.0 and k <= 0:
            trims[i] = Trim(zero=True)
        elif density < 1.0:
            todo.append((i, k))
        if store_deltas and (i, k) not in todo:  # no threshold pass over this one: subtract here
            np.subtract(xs[i], base, out=xs[i])
    found = kth_largest_magnitudes([xs[i] for i, _ in todo], [k for _, k in todo], base, store_deltas)
    for (i, k), (threshold, n_ge) in zip(todo, found, strict=True):
        if threshold <= 0:  # fewer than k nonzero entries: every nonzero one is kept
            continue
        surplus = n_ge - k  # entries equal to the threshold beyond k: the last ones by position go
        drop = None
        if surplus > 0:
            drop = tied_positions_to_drop(xs[i], None if store_deltas else base, threshold, surplus)
        trims[i] = Trim(threshold, drop)
    return trims


def combine_task_vectors(
    out: torch.Tensor,
    weights: Sequence[float],
    consensus: bool,
    normalize: bool,
    lambda_: float = 1.0,
    deltas: list[np.ndarray] | None = None,
    inputs: tuple[list[np.ndarray], np.ndarray, list[Trim]] | None = None,
) -> None:
    """out += lambda * sum_i w_i d_i [* agree_i] / (sum_i w_i [* agree_i] if normalize), chunk by chunk.

    The d_i are either stored float32 `deltas` (overwritten) or computed per chunk from
    `inputs` = (xs, base, trims) as trim(x_i - base); `out` is a flat float32 tensor (it may
    share memory with base: each chunk of base is read before that chunk of out is written).
    """
    import numpy as np

    o = out.numpy()
    n = o.size
    m_models = len(weights)
    if deltas is not None and any(d.dtype != np.float32 for d in deltas):
        raise TypeError("task vectors must be float32")
    total_weight = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
    unit_weights = all(w == 1.0 for w in weights)
    size = min(n, CHUNK)
    scratch = [np.empty(size, dtype=np.float32) for _ in range(m_models)] if deltas is None else []
    mixed, divisor, tmp, weighted = (np.empty(size, dtype=np.float32) for _ in range(4))
    sign_bit, count, unit = (np.empty(size, dtype=np.int32) for _ in range(3))
    zeros, ones = np.zeros(size, dtype=np.int32), np.ones(size, dtype=np.int32)
    mask = np.empty(size, dtype=bool)
    for s, e in chunks(n, CHUNK):
        m = e - s
        mix, div, t, ag = mixed[:m], divisor[:m], tmp[:m], mask[:m]
        if deltas is not None:
            parts = [d[s:e] for d in deltas]
        else:
            parts = _trimmed_chunk(inputs, s, e, [x[:m] for x in scratch], t, ag)
        for part, w in zip(parts, weights, strict=True):
            if w != 1.0:
                np.multiply(part, w, out=part)
        if m_models == 1:
            np.copyto(mix, parts[0])
        else:
            np.add(parts[0], parts[1], out=mix)
            for part in parts[2:]:
                np.add(mix, part, out=mix)
        if consensus:
            sb, cnt, u = sign_bit[:m], count[:m], unit[:m]
            # Elected sign: the sign bit of the weighted sum (+ where it is >= 0; -0.0 only when all are zero).
            np.bitwise_and(mix.view(np.int32), np.int32(-_SIGN), out=sb)
            if normalize and not unit_weights:
                div.fill(0.0)
            for i, (part, w) in enumerate(zip(parts, weights, strict=True)):
                # |part| where its sign is the elected one, else +0: xor clears the sign bit where the
                # signs agree and sets it (a negative int32) where they differ; max with 0 drops those.
                acc = mix if i == 0 else t
                bits = acc.view(np.int32)
                np.bitwise_xor(part.view(np.int32), sb, out=bits)
                np.maximum(bits, zeros[:m], out=bits)
                if normalize and unit_weights:  # each agreeing entry counts 1: min(bits, 1), summed as int32
                    np.minimum(bits, ones[:m], out=cnt if i == 0 else u)
                    if i > 0:
                        np.add(cnt, u, out=cnt)
                elif normalize:
                    np.greater(bits, 0, out=ag)
                    np.add(div, np.multiply(ag, w, out=weighted[:m]), out=div)
                if i > 0:
                    np.add(mix, t, out=mix)
            np.bitwise_or(mix.view(np.int32), sb, out=mix.view(np.int32))  # give the sum the elected sign
            if normalize:
                if unit_weights:
                    np.maximum(cnt, ones[:m], out=cnt)  # no agreeing entry: the sum is 0; divide by 1
                    np.copyto(div, cnt)
                else:
                    np.add(div, np.equal(div, 0.0, out=ag), out=div)
                np.divide(mix, div, out=mix)
        elif normalize:
            np.divide(mix, total_weight, out=mix)
        if lambda_ != 1.0:
            np.multiply(mix, lambda_, out=mix)
        np.add(o[s:e], mix, out=o[s:e])


def _trimmed_chunk(inputs, s: int, e: int, scratch: list[np.ndarray], tmp: np.ndarray, keep: np.ndarray):
    """trim(x_i - base) for positions s:e of each input, written into `scratch` (or in place)."""
    import numpy as np

    xs, base, trims = inputs  # base None: the xs already hold the task vectors (ours to overwrite)
    b = None if base is None else base[s:e]
    parts = []
    for x, trim, part in zip(xs, trims, scratch, strict=True):
        if b is None:
            part = x[s:e]
        if trim.zero:
            part.fill(0.0)
        else:
            if b is not None:
                np.subtract(x[s:e], b, out=part)
            if trim.threshold is not None:
                # d * (|d| >= threshold): a dropped entry becomes a zero of d's sign, as a masked product does
                np.abs(part, out=tmp)
                np.greater_equal(tmp, trim.threshold, out=keep)
                np.multiply(part, keep, out=part)
                if trim.drop is not None:
                    lo, hi = np.searchsorted(trim.drop, (s, e))
                    if hi > lo:
                        part[trim.drop[lo:hi] - s] = 0.0
        parts.append(part)
    return parts


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
