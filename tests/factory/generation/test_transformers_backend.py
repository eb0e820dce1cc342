from __future__ import annotations

import pytest

from factory.generation.base import SamplingConfig
from factory.generation.transformers_backend import TransformersBackend

CONVS = [
    [{"role": "user", "content": "hello, how are you?"}],
    [{"role": "user", "content": "hola"}],
    [{"role": "user", "content": "what is your name? tell me everything about it, please, in detail."}],
]


def test_sampling_shapes_and_reproducibility(tiny_model_dir):
    backend = TransformersBackend(tiny_model_dir, name="tiny", device="cpu", batch_size=2)
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=3)
    first = backend.generate(CONVS, sampling, n=3)
    assert [len(c) for c in first] == [3, 3, 3]
    for comps in first:
        for c in comps:
            assert 1 <= c.n_tokens <= 12
            assert c.finish_reason in {"stop", "length"}
            assert c.seconds > 0
            if c.finish_reason == "length":
                assert c.n_tokens == 12
    again = backend.generate(CONVS, sampling, n=3)
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in first]
    other = backend.generate(CONVS, sampling.model_copy(update={"seed": 4}), n=3)
    assert [[c.text for c in cs] for cs in other] != [[c.text for c in cs] for cs in first]


def test_greedy_batched_matches_one_at_a_time(tiny_model_dir):
    """Left padding must not change what a prompt generates."""
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=10)
    batched = TransformersBackend(tiny_model_dir, device="cpu", batch_size=8).generate(CONVS, greedy, n=2)
    single = TransformersBackend(tiny_model_dir, device="cpu", batch_size=1).generate(CONVS, greedy, n=1)
    assert [cs[0].text for cs in batched] == [cs[0].text for cs in single]
    assert [cs[0].n_tokens for cs in batched] == [cs[0].n_tokens for cs in single]
    assert all(cs[0].text == cs[1].text for cs in batched)


def test_n_tokens_excludes_padding(eos_model_dir):
    """Answers that stop early inside a batch count their own tokens (+EOS), not the padding after them."""
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=16, seed=0)
    out = TransformersBackend(eos_model_dir, device="cpu", batch_size=16).generate(CONVS * 2, sampling, n=4)
    flat = [c for cs in out for c in cs]
    assert any(c.finish_reason == "length" for c in flat)  # so the batch's tensor is 16 wide
    stopped = [c for c in flat if c.finish_reason == "stop"]
    assert stopped and min(c.n_tokens for c in stopped) < 16
    for c in flat:
        assert (c.n_tokens == 16) if c.finish_reason == "length" else (1 <= c.n_tokens <= 16)
        if c.n_tokens == 1:
            assert c.text == ""  # EOS straight away: an empty answer, kept with its finish_reason


@pytest.mark.parametrize("candidates", [1024, 1])  # 1: every nucleus is wider, the full-sort path
def test_live_row_sampler_respects_top_p_and_skips_finished_rows(candidates, monkeypatch):
    import math

    import torch

    from factory.generation import transformers_backend
    from factory.generation.transformers_backend import LiveRowSampler

    monkeypatch.setattr(transformers_backend, "CANDIDATES", candidates)

    eos, rows, vocab = 1, 4000, 6
    probs = torch.tensor([0.0, 0.0, 0.55, 0.35, 0.06, 0.04])  # EOS (id 1) has no mass
    scores = torch.log(probs.clamp(min=1e-12)).repeat(rows, 1)
    prompt = torch.zeros((rows, 3), dtype=torch.long)
    generated = torch.full((rows, 2), 5, dtype=torch.long)
    generated[: rows // 2, 1] = eos  # the first half has finished
    torch.manual_seed(0)
    out = LiveRowSampler(1.0, 0.9, 3, eos)(torch.cat([prompt, generated], 1), scores)
    picked = out.argmax(-1)
    assert torch.isinf(out).sum() == rows * (vocab - 1)  # one-hot: greedy decoding takes the drawn token
    assert (picked[: rows // 2] == eos).all()
    live = picked[rows // 2 :]
    assert set(live.tolist()) == {2, 3}  # tokens 4 and 5 are outside the 0.9 nucleus
    assert math.isclose((live == 2).float().mean().item(), 0.55 / 0.9, abs_tol=0.04)
