"""Sparsification of task vectors: magnitude top-k (TIES) and random drop-and-rescale (DARE).

Large tensors are processed in cache-sized chunks with reused scratch buffers: on CPU,
allocating and page-faulting full-size temporaries costs more than the arithmetic.
Selections (counting, boolean masks, compaction, partial sorts) go through numpy views of
the same memory: on one thread its boolean ops run 4-6x faster than torch's (see
docs/BENCHMARKS.md), and neither copies the tensor.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

# Elements per chunk: 64Ki float32 (256 KiB), so the few chunk-sized arrays a pass keeps live
# stay in this machine's per-core L2 (1 MiB); 4x larger chunks measured 10-15% slower.
CHUNK = 1 << 16
_SMALL = 1 << 16  # below this many entries an exact partition of the whole tensor is cheap
_SAMPLE = 1 << 15


def chunks(n: int, size: int | None = None):
    """(start, end) pairs covering range(n), CHUNK long by default."""
    size = size or CHUNK
    for start in range(0, n, size):
        yield start, min(n, start + size)


def float32_array(x: torch.Tensor) -> np.ndarray:
    """A flat float32 numpy view of `x` (a copy only when it is not contiguous float32)."""
    import torch

    flat = x.detach().reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat.numpy()


def kth_largest_magnitude(x: torch.Tensor, k: int) -> tuple[float, int]:
    """The k-th largest |x| (1 <= k <= numel) and how many entries are >= it."""
    return kth_largest_magnitudes([float32_array(x)], [k])[0]


def kth_largest_magnitudes(
    arrays: list[np.ndarray], ks: list[int], base: np.ndarray | None = None, store_deltas: bool = False
) -> list[tuple[float, int]]:
    """For each flat float32 array a and its k: the k-th largest |a - base| (|a| without a base)
    and how many entries are >= it. All arrays have base's size; one pass reads them together.
    With `store_deltas` (and a base), each array is overwritten with a - base on the way.

    Exact. For large arrays a strided sample brackets each threshold, one chunked pass counts
    the entries at or above each bracket and collects those inside it, and a partial sort runs
    on that small band only; the task vectors a - base are never stored.
    """
    import numpy as np

    if not arrays:
        return []
    n = arrays[0].size
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, {n}], got {k}")
    if n <= _SMALL:  # exact partitions of the whole (small) task vectors
        if store_deltas and base is not None:
            for a in arrays:
                np.subtract(a, base, out=a)
            base = None
        return [_exact_kth(_magnitudes(a, base), k) for a, k in zip(arrays, ks, strict=True)]
    at = _sample_positions(n)
    brackets = []
    for a, k in zip(arrays, ks, strict=True):
        sample = np.abs(a[at] if base is None else np.subtract(a[at], base[at]))
        m = sample.size
        q = 1.0 - k / n
        # 4.5 standard errors of the sample quantile (a miss costs one exact partition, never a wrong
        # answer). The band's width matters: compacting it costs ~15 ns per kept entry in branch misses.
        margin = 4.5 * (q * (1.0 - q) / m) ** 0.5 + 2.0 / m
        lo_i, hi_i = int((q - margin) * m) - 1, int((q + margin) * m)
        kth = [i for i in (lo_i, hi_i) if 0 <= i < m]
        if kth:
            sample.partition(kth)  # in place: the sample is our own copy
        lo = float(sample[lo_i]) if lo_i >= 0 else 0.0
        hi = float(sample[hi_i]) if hi_i < m else float("inf")
        brackets.append((lo, hi))
    size = min(n, CHUNK)
    buf = np.empty(size, dtype=np.float32)
    ge, le = np.empty(size, dtype=bool), np.empty(size, dtype=bool)
    at_least = [0] * len(arrays)
    bands: list[list[np.ndarray]] = [[] for _ in arrays]
    for s, e in chunks(n):
        mag, g, below = buf[: e - s], ge[: e - s], le[: e - s]
        for i, (a, (lo, hi)) in enumerate(zip(arrays, brackets, strict=True)):
            if base is None:
                np.abs(a[s:e], out=mag)
            elif store_deltas:
                np.abs(np.subtract(a[s:e], base[s:e], out=a[s:e]), out=mag)
            else:
                np.abs(np.subtract(a[s:e], base[s:e], out=mag), out=mag)
            np.greater_equal(mag, lo, out=g)
            at_least[i] += int(np.count_nonzero(g))
            np.logical_and(g, np.less_equal(mag, hi, out=below), out=g)
            bands[i].append(np.compress(g, mag))  # a third cheaper than mag[g]
    results = []
    for a, k, parts, count in zip(arrays, ks, bands, at_least, strict=True):
        band = np.concatenate(parts)
        above = count - band.size
        need = k - above  # the need-th largest in the band; if the sample missed, take the exact path
        if 0 < need <= band.size:
            i = band.size - need
            band.partition(i)
            threshold = band[i]
            results.append((float(threshold), above + int(np.count_nonzero(band >= threshold))))
        else:
            results.append(_exact_kth(_magnitudes(a, None if store_deltas else base), k))
    return results


@lru_cache(maxsize=32)
def _sample_positions(n: int) -> np.ndarray:
    """About _SAMPLE distinct positions in range(n), sorted, drawn at random (seeded by n) so that
    no stride lines up with a weight matrix's rows or columns."""
    import numpy as np

    return np.unique(np.random.default_rng(n).integers(0, n, _SAMPLE))


def _magnitudes(a: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    import numpy as np

    return np.abs(a) if base is None else np.abs(a - base)


def _exact_kth(mag: np.ndarray, k: int) -> tuple[float, int]:
    import numpy as np

    n = mag.size
    threshold = np.partition(mag, n - k)[n - k]
    return float(threshold), int(np.count_nonzero(mag >= threshold))


def tied_positions_to_drop(a: np.ndarray, base: np.ndarray | None, threshold: float, surplus: int) -> np.ndarray:
    """Positions (ascending) of the last `surplus` entries with |a - base| == threshold: the ties
    at a top-k threshold that do not fit, so that the first ones by position are kept."""
    import numpy as np

    found: list[np.ndarray] = []
    for s, e in reversed(list(chunks(a.size))):
        equal = np.flatnonzero(_magnitudes(a[s:e], None if base is None else base[s:e]) == threshold)
        take = equal[max(0, equal.size - surplus) :]
        if take.size:
            found.append(take + s)
            surplus -= take.size
        if surplus == 0:
            break
    return np.concatenate(found[::-1]) if found else np.empty(0, dtype=np.int64)


def topk_magnitude_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly `k` entries of `x` with the largest |x| (ties broken by position)."""
    import numpy as np
    import torch

    if k >= x.numel():
        return torch.ones_like(x, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    threshold, n_ge = kth_largest_magnitude(x, k)
    mag = np.abs(float32_array(x))
    mask = mag > threshold
    equal = np.flatnonzero(mag == threshold)
    mask[equal[: k - (n_ge - equal.size)]] = True
    return torch.from_numpy(mask).view(x.shape)


def magnitude_prune(delta: torch.Tensor, density: float, inplace: bool = False) -> torch.Tensor:
    """TIES trim: keep the int(density * n) entries of largest magnitude, zero the rest.

    Entries tied at the threshold are kept in order of position until exactly k are kept.
    """
    import torch

    if density >= 1.0:
        return delta
    out = delta if inplace else delta.clone()
    n = out.numel()
    k = int(density * n)
    if k <= 0:
        return out.zero_()
    threshold, n_ge = kth_largest_magnitude(out, k)
    # Float-only torch ops per chunk (bool masks are several times slower in torch):
    # |x| > just-below-threshold keeps |x| >= threshold; copysign restores the signs.
    below = float(torch.nextafter(torch.tensor(threshold), torch.tensor(-1.0)))
    flat = out.view(-1)
    buf = torch.empty(min(n, CHUNK), dtype=out.dtype)
    for s, e in chunks(n):
        chunk, kept = flat[s:e], buf[: e - s]
        torch.nn.functional.threshold_(torch.abs(chunk, out=kept), below, 0.0)
        torch.copysign(kept, chunk, out=chunk)
    surplus = n_ge - k  # entries equal to the threshold beyond k: drop the last ones (zeros need no dropping)
    if surplus > 0 and threshold > 0:
        drop = tied_positions_to_drop(float32_array(out), None, threshold, surplus)
        flat[torch.from_numpy(drop)] = 0.0
    return out


def dare_mask(shape, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE's random keep-mask: each entry kept with probability `density`."""
    import torch

    return torch.rand(shape, generator=generator, dtype=torch.float32) < density


def dare_drop(
    delta: torch.Tensor,
    density: float,
    generator: torch.Generator | None = None,
    rescale: bool = True,
    inplace: bool = False,
) -> torch.Tensor:
    """DARE: drop each entry with probability 1 - density; rescale survivors by 1/density."""
    if density >= 1.0:
        return delta
    out = delta if inplace else delta.clone()
    if density <= 0.0:
        return out.zero_()
    out.mul_(dare_mask(out.shape, density, generator))
    if rescale:
        out.div_(density)
    return out
