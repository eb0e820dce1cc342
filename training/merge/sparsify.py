"""Sparsification of task vectors: magnitude top-k (TIES) and random drop-and-rescale (DARE).

Large tensors are processed in cache-sized chunks with reused scratch buffers: on CPU,
allocating and page-faulting full-size temporaries costs more than the arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 18  # elements per chunk (1 MiB of float32)
_SMALL = 1 << 16  # below this many entries an exact kthvalue on the whole tensor is cheap
_SAMPLE = 1 << 15


def chunks(n: int, size: int = CHUNK):
    """(start, end) pairs covering range(n)."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def kth_largest_magnitude(x: torch.Tensor, k: int) -> tuple[float, int]:
    """The k-th largest |x| (1 <= k <= numel) and how many entries are >= it.

    Exact. For large tensors a strided sample brackets the threshold, one chunked pass
    counts the entries above the bracket and collects those inside it, and kthvalue
    runs on that small band only.
    """
    import torch

    flat = x.reshape(-1)
    n = flat.numel()
    if n > _SMALL:
        q = 1.0 - k / n
        sample = flat[:: max(1, n // _SAMPLE)].abs().float()
        m = sample.numel()
        margin = 3.0 / m**0.5 + 0.002  # over 6 standard errors of the sample quantile
        lo = float(sample.kthvalue(max(1, int((q - margin) * m))).values) if q - margin > 0 else 0.0
        hi = float(sample.kthvalue(min(m, int((q + margin) * m) + 1)).values) if q + margin < 1 else float("inf")
        above, parts = 0, []
        if lo > 0:  # (a bracket reaching 0 would lose the zeros below: take the exact path)
            # Float-only ops except one mask (bool masks are several times slower on CPU).
            lo_ = float(torch.nextafter(torch.tensor(lo), torch.tensor(-1.0)))
            buf = torch.empty(min(n, CHUNK), dtype=torch.float32)
            ge_lo, gt_hi = torch.empty_like(buf), torch.empty_like(buf)
            for s, e in chunks(n):
                a = torch.abs(flat[s:e], out=buf[: e - s])
                g, h = ge_lo[: e - s], gt_hi[: e - s]
                torch.threshold(a, lo_, 0.0, out=g)  # entries >= lo, else 0
                torch.threshold(g, hi, 0.0, out=h)  # entries > hi, else 0
                band = g.sub_(h)  # entries in [lo, hi], else 0
                above += int(h.sign_().sum())  # (float count_nonzero is slow; sums of 0/1 are exact here)
                parts.append(band[band != 0])
        band = torch.cat(parts) if parts else torch.empty(0)
        need = k - above  # the need-th largest in the band; if the sample missed, take the exact path
        if 0 < need <= band.numel():
            threshold = float(band.kthvalue(band.numel() - need + 1).values)
            return threshold, above + int(torch.count_nonzero(band >= threshold))
    mag = flat.abs().float()
    threshold = float(mag.kthvalue(n - k + 1).values)
    return threshold, int(torch.count_nonzero(mag >= threshold))


def topk_magnitude_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly `k` entries of `x` with the largest |x| (ties broken by position)."""
    import torch

    if k >= x.numel():
        return torch.ones_like(x, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    threshold, n_ge = kth_largest_magnitude(x, k)
    mag = x.detach().abs()
    mask = mag >= threshold
    if n_ge > k:  # several entries equal the threshold: drop the last surplus ones
        flat = mask.view(-1)
        equal = (mag.view(-1) == threshold).nonzero().flatten()
        flat[equal[len(equal) - (n_ge - k) :]] = False
    return mask


def magnitude_prune(delta: torch.Tensor, density: float, inplace: bool = False) -> torch.Tensor:
    """TIES trim: keep the int(density * n) entries of largest magnitude, zero the rest."""
    import torch

    if density >= 1.0:
        return delta
    out = delta if inplace else delta.clone()
    n = out.numel()
    k = int(density * n)
    if k <= 0:
        return out.zero_()
    threshold, n_ge = kth_largest_magnitude(out, k)
    if n_ge != k or threshold <= 0:  # ties at the threshold: build the exact mask
        return out.mul_(topk_magnitude_mask(out, k))
    # Float-only ops per chunk (bool masks are several times slower on CPU):
    # |x| > just-below-threshold keeps |x| >= threshold; copysign restores the signs.
    below = float(torch.nextafter(torch.tensor(threshold), torch.tensor(-1.0)))
    flat = out.view(-1)
    buf = torch.empty(min(n, CHUNK), dtype=torch.float32)
    for s, e in chunks(n):
        chunk, kept = flat[s:e], buf[: e - s]
        torch.nn.functional.threshold_(torch.abs(chunk, out=kept), below, 0.0)
        torch.copysign(kept, chunk, out=chunk)
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
