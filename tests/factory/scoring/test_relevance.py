from __future__ import annotations

import numpy as np
import pytest

from factory.scoring.relevance import RELEVANCE_FILE, PMIScorer, Relevance, fit_weights
from factory.scoring.sequence_classifier import SequenceClassifierScorer

DIALOGS = [
    ("hello, how are you?", "I am fine, thank you."),
    ("what is your name?", "my name is bot."),
    ("do you like music?", "yes, I love to sing songs."),
    ("where do you live?", "inside a small computer."),
    ("hola, ¿cómo estás?", "estoy bien, gracias."),
    ("¿dónde vives?", "en una computadora pequeña."),
]


@pytest.fixture(scope="module")
def dialog_lm(tiny_lm, tmp_path_factory):
    """A tiny causal LM trained for a few seconds on DIALOGS (each prompt followed by its reply)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.pretrain import train_causal_lm
    from training.tiny import save_model

    base = tiny_lm([t for pair in DIALOGS for t in pair] * 4, vocab_size=300)
    tok, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    convs = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in DIALOGS]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_causal_lm(model, tok, convs, steps=400, batch_size=6, lr=1e-2, seed=0, max_length=64, progress=False)
    finally:
        torch.set_num_threads(threads)
    return save_model(model, tok, tmp_path_factory.mktemp("dialog_lm") / "lm")


def test_pmi_is_higher_for_the_true_reply_than_for_another_prompts_reply(dialog_lm):
    scorer = PMIScorer(dialog_lm, batch_size=4, max_length=64)
    prompts = [[{"role": "user", "content": p}] for p, _ in DIALOGS]
    true = scorer.pmi(prompts, [r for _, r in DIALOGS])
    for shift in (1, 2, 3):
        other = scorer.pmi(prompts, [DIALOGS[(i + shift) % len(DIALOGS)][1] for i in range(len(DIALOGS))])
        assert all(t > o for t, o in zip(true, other, strict=True)), (shift, true, other)
    # batching and length-sorting do not change a value; the caller's order is kept
    single = PMIScorer(dialog_lm, batch_size=1, max_length=64).pmi(prompts, [r for _, r in DIALOGS])
    assert single == pytest.approx(true, abs=1e-4)
    assert scorer.pmi([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 replies"):
        scorer.pmi(prompts[:2], ["x"])


def test_long_inputs_are_cut_to_max_length_not_rejected(dialog_lm):
    scorer = PMIScorer(dialog_lm, batch_size=2, max_length=16)
    values = scorer.pmi([[{"role": "user", "content": "hello " * 40}]] * 2, ["I am fine, " * 30, "ok"])
    assert len(values) == 2 and all(np.isfinite(values))


def test_fit_weights_finds_the_informative_feature():
    rng = np.random.default_rng(0)
    signal = rng.normal(1.0, 1.0, 400)  # chosen - rejected: usually positive
    noise = rng.normal(0.0, 1.0, 400)
    w = fit_weights(np.stack([signal, noise], axis=1))
    assert w[0] > 0.5 and abs(w[1]) < 0.3
    with pytest.raises(ValueError, match="non-empty"):
        fit_weights(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="finite"):
        fit_weights(np.array([[np.nan, 1.0]]))


def test_combination_round_trips_and_the_scorer_uses_it(tiny_rm, dialog_lm, tmp_path):
    import shutil

    folder = tmp_path / "arbiter"
    shutil.copytree(tiny_rm, folder)
    prompts = [[{"role": "user", "content": p}] for p, _ in DIALOGS]
    replies = [r for _, r in DIALOGS]
    plain = SequenceClassifierScorer(folder, batch_size=4)
    assert plain.relevance is None and "relevance" not in plain.identity
    classifier = plain.score(prompts, replies)

    combo = Relevance(weights={"classifier": 0.5, "pmi": 2.0}, max_length=64, fitted_on={"pairs": 3})
    combo.save(folder, lm_dir=dialog_lm)
    assert Relevance.load(folder) == combo and (folder / RELEVANCE_FILE).exists()

    scorer = SequenceClassifierScorer(folder, batch_size=4)
    pmi = PMIScorer(folder / combo.lm, batch_size=3, max_length=64).pmi(prompts, replies)
    expected = [0.5 * c + 2.0 * p for c, p in zip(classifier, pmi, strict=True)]
    assert scorer.score(prompts, replies) == pytest.approx(expected, abs=1e-4)
    # what a Ray worker rebuilds from the scorer's config scores the same
    assert scorer.config().build().score(prompts, replies) == pytest.approx(expected, abs=1e-4)
    # the score cache's key changes with the weights
    assert scorer.identity["relevance"]["weights"] == combo.weights
    Relevance(weights={"classifier": 0.5, "pmi": 1.0}, max_length=64).save(folder)
    assert SequenceClassifierScorer(folder).identity != scorer.identity

    (folder / RELEVANCE_FILE).write_text('{"weights": "heavy"}')
    with pytest.raises(ValueError, match="not a valid relevance combination"):
        SequenceClassifierScorer(folder)
