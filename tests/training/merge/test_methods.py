"""Each merge method against a direct computation of its definition, on small random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from tests.training.merge.reference import (
    ref_combine,
    ref_combine_loop,
    ref_dare,
    ref_linear,
    ref_slerp,
    ref_ties,
    ref_trim,
)
from training.merge import METHODS, get_method, method_names
from training.merge.linear import linear
from training.merge.slerp import slerp, slerp_pair
from training.merge.sparsify import dare_drop, magnitude_prune, topk_magnitude_mask

# The registry's task-arithmetic methods, called with their defaults (as the merge runner does).
ties, dare_ties, dare_linear = METHODS["ties"], METHODS["dare_ties"], METHODS["dare_linear"]


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_registry_has_every_method_and_rejects_unknown():
    assert method_names() == ["dare_linear", "dare_ties", "linear", "slerp", "ties"]
    assert get_method("ties").needs_base and not get_method("linear").needs_base
    assert [m for m in method_names() if get_method(m).needs_base] == ["dare_linear", "dare_ties", "ties"]
    with pytest.raises(ValueError, match="unknown merge_method 'tiez'.*linear"):
        get_method("tiez")


def test_linear_is_the_weighted_average():
    xs = [_randn(4, 5, seed=s) for s in range(3)]
    w = [0.5, 0.3, 0.2 * 3]
    torch.testing.assert_close(linear(xs, w), ref_linear(xs, w))
    torch.testing.assert_close(linear(xs, w, normalize=False), ref_linear(xs, w, normalize=False))
    torch.testing.assert_close(linear(xs), sum(xs) / 3)
    with pytest.raises(ValueError, match="sum to zero"):
        linear(xs[:2], [1.0, -1.0])


def test_slerp_follows_the_arc_and_hits_its_ends():
    v0, v1 = _randn(6, 7, seed=0), _randn(6, 7, seed=1)
    for t in (0.0, 0.3, 0.5, 1.0):
        torch.testing.assert_close(slerp([v0, v1], t=t), ref_slerp(v0, v1, t).float(), rtol=1e-4, atol=1e-5)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp_pair(e0, e1, 0.5)
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    assert abs(float(mid.norm()) - 1.0) < 1e-6  # the linear midpoint would have norm 0.707


def test_slerp_falls_back_to_lerp_for_parallel_tensors():
    v0 = _randn(10, seed=0)
    v1 = 2.0 * v0  # parallel: the arc is undefined
    torch.testing.assert_close(slerp([v0, v1], t=0.25), torch.lerp(v0, v1, 0.25))
    with pytest.raises(ValueError, match="exactly two"):
        slerp([v0, v0, v1], t=0.5)


@pytest.mark.parametrize("n", [37, 3_000_000])  # small: plain kthvalue; large: bracketed by a sample
def test_topk_magnitude_mask_matches_a_full_sort(n):
    x = _randn(n, seed=n)
    k = int(0.3 * n)
    mask = topk_magnitude_mask(x, k)
    assert int(mask.sum()) == k
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.argsort(x.abs(), descending=True)[:k]] = True
    assert torch.equal(mask, expected)


def test_topk_magnitude_mask_keeps_exactly_k_with_tied_magnitudes():
    x = torch.tensor([1.0, -1.0, 1.0, 0.5, -1.0, 2.0])
    mask = topk_magnitude_mask(x, 3)
    assert int(mask.sum()) == 3 and bool(mask[5])
    assert set(x.abs()[mask].tolist()) == {1.0, 2.0}


def test_magnitude_prune_matches_reference():
    d = _randn(9, 11, seed=3)
    torch.testing.assert_close(magnitude_prune(d, 0.4), ref_trim(d, 0.4))
    assert magnitude_prune(d, 1.0) is d


def test_ties_matches_its_definition():
    base = _randn(5, 6, seed=0)
    xs = [base + 0.1 * _randn(5, 6, seed=s) for s in (1, 2, 3)]
    w, dens = [1.0, 0.5, 2.0], [0.5, 0.7, 0.3]
    torch.testing.assert_close(ties(xs, base, w, dens), ref_ties(xs, base, w, dens))
    torch.testing.assert_close(ties(xs, base, w, dens, normalize=False), ref_ties(xs, base, w, dens, normalize=False))
    deltas = [ref_trim(x - base, d) for x, d in zip(xs, dens, strict=True)]
    torch.testing.assert_close(ties(xs, base, w, dens), ref_combine_loop(deltas, base, w, True, True))
    with pytest.raises(ValueError, match="base_model"):
        ties(xs, None, w, dens)


def test_ties_sign_election_drops_the_minority():
    base = torch.zeros(1)
    xs = [torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([-2.0])]
    # elected sign +, agreeing entries 3 and 1, disjoint mean 2
    assert float(ties(xs, base, densities=[1.0, 1.0, 1.0])) == pytest.approx(2.0)


def test_dare_drop_keeps_density_and_rescales():
    delta = torch.ones(100_000)
    out = dare_drop(delta, 0.25, torch.Generator().manual_seed(0))
    kept = out != 0
    assert abs(float(kept.float().mean()) - 0.25) < 0.01
    assert torch.all(out[kept] == 4.0)
    again = dare_drop(delta, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert abs(float(out.mean()) - 1.0) < 0.05  # unbiased in expectation


@pytest.mark.parametrize("consensus", [True, False])
def test_dare_methods_match_their_definition(consensus):
    base = _randn(4, 8, seed=0)
    xs = [base + 0.1 * _randn(4, 8, seed=s) for s in (1, 2)]
    w, dens = [0.6, 0.4], [0.5, 0.8]
    fn = dare_ties if consensus else dare_linear
    got = fn(xs, base, w, dens, generator=torch.Generator().manual_seed(7))
    want = ref_dare(xs, base, w, dens, torch.Generator().manual_seed(7), consensus=consensus)
    torch.testing.assert_close(got, want)
    # with density 1 nothing is dropped: dare_linear is task arithmetic
    if not consensus:
        plain = dare_linear(xs, base, w, [1.0, 1.0])
        torch.testing.assert_close(plain, ref_combine([x - base for x in xs], base, w, False, False))


def test_magnitude_prune_large_tensor_and_tied_magnitudes():
    d = _randn(700, 1000, seed=5)  # large enough for the sampled, chunked path
    torch.testing.assert_close(magnitude_prune(d, 0.3), ref_trim(d, 0.3))
    tied = torch.tensor([1.0, -1.0, 1.0, 0.5, -1.0, 2.0])
    out = magnitude_prune(tied, 0.5)
    assert int((out != 0).sum()) == 3 and float(out[5]) == 2.0
    with_zeros = torch.cat([torch.zeros(200_000), _randn(100_000, seed=6)])  # threshold falls among zeros
    assert int((magnitude_prune(with_zeros, 0.9) != 0).sum()) == 100_000


def test_magnitude_prune_breaks_ties_at_the_threshold_by_position_on_large_tensors():
    # 300k entries, a third of them tied at |1.0|: about 63k others exceed it, so with k = 120k
    # the threshold is 1.0 and only some of the ties fit
    x = _randn(300_000, seed=7)
    x[::3] = torch.where(torch.arange(100_000) % 2 == 0, 1.0, -1.0)
    k = int(0.4 * x.numel())
    out = magnitude_prune(x, 0.4)
    kept = out != 0
    assert int(kept.sum()) == k
    assert torch.equal(out[kept], x[kept])  # survivors keep their values and signs
    assert float(x.abs()[~kept].max()) == 1.0 == float(x.abs()[kept].min())
    tied_kept = kept & (x.abs() == 1.0)
    last_kept = int(tied_kept.nonzero().max())
    dropped_ties = (~kept) & (x.abs() == 1.0)
    assert int(dropped_ties.nonzero().min()) > last_kept  # the tied entries kept are the first ones
    assert torch.equal(topk_magnitude_mask(x, k), kept)


def test_methods_leave_their_inputs_alone_unless_inplace():
    base = _randn(300, 400, seed=0)
    xs = [base + 0.1 * _randn(300, 400, seed=s) for s in (1, 2)]
    copies = [x.clone() for x in xs]
    linear(xs, [0.5, 0.5])
    ties(xs, base, densities=[0.5, 0.5])
    dare_ties(xs, base, densities=[0.5, 0.5], generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(x, c) for x, c in zip(xs, copies, strict=True))
    pure = ties(xs, base, densities=[0.5, 0.5])
    reused = ties([x.clone() for x in xs], base.clone(), densities=[0.5, 0.5], inplace=True)
    torch.testing.assert_close(reused, pure)


def test_registry_is_static_and_the_method_modules_do_not_import_it():
    import ast
    from pathlib import Path

    import training.merge

    folder = Path(training.merge.__file__).parent
    for module in ("linear", "slerp", "task_arithmetic", "sparsify"):
        tree = ast.parse((folder / f"{module}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "training.merge.registry" not in imported, module  # no circle: only the registry imports methods
    assert set(METHODS) == set(method_names())


def test_importing_the_merge_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, training.merge; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_merge_settings_method_literal_is_the_registry():
    from typing import get_args

    from pydantic import ValidationError

    from training.merge import METHOD_NAMES, MergeSettings

    assert get_args(MergeSettings.model_fields["method"].annotation) == METHOD_NAMES
    assert MergeSettings().method == "linear"
    with pytest.raises(ValidationError, match="ties"):
        MergeSettings(method="tiez")
    assert [m for m in METHOD_NAMES if get_method(m).uses_densities] == ["dare_linear", "dare_ties", "ties"]


def test_task_arithmetic_is_one_function_parameterised_by_sparsification_and_consensus():
    from training.merge.task_arithmetic import task_arithmetic

    base = _randn(5, 6, seed=0)
    xs = [base + 0.1 * _randn(5, 6, seed=s) for s in (1, 2)]
    w = [0.7, 0.3]
    plain = task_arithmetic(xs, base, w)  # no sparsification, no consensus: base + sum_i w_i (x_i - base)
    torch.testing.assert_close(plain, ref_combine([x - base for x in xs], base, w, False, False))
    assert torch.equal(
        task_arithmetic(xs, base, w, [0.5, 0.7], sparsification="magnitude", consensus=True, normalize=True),
        ties(xs, base, w, [0.5, 0.7]),
    )
    with pytest.raises(ValueError, match="unknown sparsification 'top'"):
        task_arithmetic(xs, base, sparsification="top")


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.5, 2.0, 1.0]])
def test_ties_on_large_tensors_with_ties_at_the_threshold_keeps_the_first_by_position(weights):
    # Large enough for the sampled threshold and several chunks; a third of each task vector is
    # tied at |0.05|, so the top-k threshold falls among tied entries and only the first ones fit.
    n = 300_000
    base = _randn(n, seed=0)
    xs = []
    for s in (1, 2, 3):
        delta = 0.03 * _randn(n, seed=s)
        delta[s::3] = torch.where(torch.arange(len(delta[s::3])) % 2 == 0, 0.05, -0.05)
        xs.append(base + delta)
    dens = [0.4, 0.5, 0.3]
    copies = [x.clone() for x in xs]
    got = ties(xs, base, weights, dens)
    assert all(torch.equal(x, c) for x, c in zip(xs, copies, strict=True))
    deltas = [magnitude_prune(x - base, d) for x, d in zip(xs, dens, strict=True)]  # tested: first by position
    assert [int((d != 0).sum()) for d in deltas] == [int(d * n) for d in dens]
    torch.testing.assert_close(got, ref_combine(deltas, base, weights, True, True), rtol=1e-6, atol=1e-7)
    inplace = ties([x.clone() for x in xs], base.clone(), weights, dens, inplace=True)
    assert torch.equal(inplace, got)


def test_kth_largest_magnitudes_of_task_vectors_match_the_direct_computation():
    from training.merge.sparsify import kth_largest_magnitude, kth_largest_magnitudes

    base = _randn(200_000, seed=0)
    xs = [base + 0.01 * _randn(200_000, seed=s) for s in (1, 2)]
    ks = [1, 150_000]
    got = kth_largest_magnitudes([x.numpy() for x in xs], ks, base.numpy())
    assert got == [kth_largest_magnitude(x - base, k) for x, k in zip(xs, ks, strict=True)]
