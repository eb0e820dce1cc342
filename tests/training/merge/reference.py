"""Direct, deliberately naive implementations of each method's definition, to check the real ones against."""

from __future__ import annotations

import math

import torch


def ref_linear(xs, weights, normalize=True):
    total = sum(w * x for w, x in zip(weights, xs, strict=True))
    return total / sum(weights) if normalize else total


def ref_slerp(v0, v1, t):
    a, b = v0.flatten().double(), v1.flatten().double()
    cos = float(a @ b / (a.norm() * b.norm()))
    if abs(cos) > 0.9995:
        return (1 - t) * v0 + t * v1
    omega = math.acos(cos)
    return (math.sin((1 - t) * omega) * v0 + math.sin(t * omega) * v1) / math.sin(omega)


def ref_trim(delta, density):
    """Keep the int(density * n) largest-magnitude entries (full argsort)."""
    k = int(density * delta.numel())
    order = torch.argsort(delta.abs().flatten(), descending=True)
    mask = torch.zeros(delta.numel())
    mask[order[:k]] = 1
    return delta * mask.view(delta.shape)


def ref_combine(deltas, base, weights, consensus, normalize):
    """Vectorised form of `ref_combine_loop` (fast enough for whole tiny models)."""
    w = torch.tensor(weights).view(-1, *[1] * base.dim())
    vals = torch.stack(deltas) * w
    if consensus:
        elected = torch.where(vals.sum(0) >= 0, 1.0, -1.0)
        keep = (vals != 0) & (torch.sign(vals) == elected)
    else:
        keep = torch.ones_like(vals, dtype=torch.bool)
    num = (vals * keep).sum(0)
    den = (w * keep).sum(0)
    if normalize:
        num = torch.where(den.abs() > 1e-8, num / den, num)
    return base + num


def ref_combine_loop(deltas, base, weights, consensus, normalize):
    """Per entry: elect the sign of sum_i w_i d_i; average (weighted) the agreeing nonzero entries."""
    out = base.clone().flatten()
    flat = [d.flatten() for d in deltas]
    for j in range(out.numel()):
        vals = [w * d[j] for w, d in zip(weights, flat, strict=True)]
        if consensus:
            elected = 1.0 if sum(vals) >= 0 else -1.0
            keep = [i for i, v in enumerate(vals) if v != 0 and math.copysign(1.0, v) == elected]
        else:
            keep = list(range(len(vals)))
        num = sum(vals[i] for i in keep)
        den = sum(weights[i] for i in keep)
        if normalize and abs(den) > 1e-8:
            num = num / den
        out[j] += num
    return out.view(base.shape)


def ref_ties(xs, base, weights, densities, normalize=True):
    deltas = [ref_trim(x - base, d) for x, d in zip(xs, densities, strict=True)]
    return ref_combine(deltas, base, weights, consensus=True, normalize=normalize)


def ref_dare(xs, base, weights, densities, generator, consensus, normalize=False):
    """Drop with p = 1 - density (same random stream as the implementation), rescale, combine."""
    deltas = []
    for x, d in zip(xs, densities, strict=True):
        keep = torch.rand(x.shape, generator=generator) < d
        deltas.append((x - base) * keep / d)
    return ref_combine(deltas, base, weights, consensus=consensus, normalize=normalize)
