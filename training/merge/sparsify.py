"""Sparsification of task vectors: magnitude top-k (TIES) and random drop-and-rescale (DARE).

Large tensors are processed in cache-sized chunks with reused scratch buffers: on CPU,
allocating and page-faulting full-size temporaries costs more than the arithmetic.
Selections (counting, boolean masks, compaction, partial sorts) go through numpy views of
the same memory: on one thread its boolean ops run 4-6x faster than torch's (see
docs/BENCHMARKS.md), and neither copies the tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

CHUNK = 1 << 18  # elements per chunk (1 MiB of float32)
_SMALL = 1 << 16  # below this many entries an exact partition of the whole tensor is cheap
_SAMPLE = 1 << 15


def chunks(n: int, size: int | None = None):
    """(start, end) pairs covering range(n), CHUNK long by default."""
    size = size or CHUNK
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _float32_array(x: torch.Tensor) -> np.ndarray:
    """A flat float32 numpy view of `x` (a copy only when it is not contiguous float32)."""
    import torch

    flat = x.detach().reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat.numpy()


def kth_largest_magnitude(x: torch.Tensor, k: int) -> tuple[float, int]:
    """The k-th largest |x| (1 <= k <= numel) and how many entries are >= it.

    Exact. For large tensors a strided sample brackets the threshold, one chunked pass
    counts the entries above the bracket and collects those inside it, and a partial sort
    runs on that small band only.
    """
    import numpy as np

    arr = _float32_array(x)
    n = arr.size
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if n > _SMALL:
        q = 1.0 - k / n
        sample = np.abs(arr[:: max(1, n // _SAMPLE)])
        m = sample.size
        margin = 3.0 / m**0.5 + 0.002  # over 6 standard errors of the sample quantile
        lo_i, hi_i = int((q - margin) * m) - 1, int((q + margin) * m)
        lo = float(np.partition(sample, lo_i)[lo_i]) if lo_i >= 0 else 0.0
        hi = float(np.partition(sample, hi_i)[hi_i]) if hi_i < m else float("inf")
        above, parts = 0, []
        buf = np.empty(min(n, CHUNK), dtype=np.float32)
        for s, e in chunks(n):
            a = np.abs(arr[s:e], out=buf[: e - s])
            above += int(np.count_nonzero(a > hi))
            parts.append(a[(a >= lo) & (a <= hi)])
        band = np.concatenate(parts)
        need = k - above  # the need-th largest in the band; if the sample missed, take the exact path
        if 0 < need <= band.size:
            i = band.size - need
            threshold = np.partition(band, i)[i]
            return float(threshold), above + int(np.count_nonzero(band >= threshold))
    mag = np.abs(arr)
    threshold = np.partition(mag, n - k)[n - k]
    return float(threshold), int(np.count_nonzero(mag >= threshold))


def topk_magnitude_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly `k` entries of `x` with the largest |x| (ties broken by position)."""
    import numpy as np
    import torch

    if k >= x.numel():
        return torch.ones_like(x, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    threshold, n_ge = kth_largest_magnitude(x, k)
    mag = np.abs(_float32_array(x))
    mask = mag > threshold
    equal = np.flatnonzero(mag == threshold)
    mask[equal[: k - (n_ge - equal.size)]] = True
    return torch.from_numpy(mask).view(x.shape)


def magnitude_prune(delta: torch.Tensor, density: float, inplace: bool = False) -> torch.Tensor:
    """TIES trim: keep the int(density * n) entries of largest magnitude, zero the rest.

    Entries tied at the threshold are kept in order of position until exactly k are kept.
    """
    import numpy as np
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
        starts = list(chunks(n))
        for s, e in reversed(starts):
            chunk = flat[s:e]
            equal = np.flatnonzero(np.abs(_float32_array(chunk)) == threshold)
            drop = equal[max(0, equal.size - surplus) :]
            if drop.size:
                chunk[torch.from_numpy(drop)] = 0.0
                surplus -= drop.size
            if surplus == 0:
                break
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
