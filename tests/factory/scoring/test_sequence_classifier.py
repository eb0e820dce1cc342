from __future__ import annotations

import pytest

from factory.scoring.sequence_classifier import SequenceClassifierConfig, SequenceClassifierScorer

PROMPTS = [[{"role": "user", "content": "Hello, how are you?"}]] * 6
COMPLETIONS = [
    "Fine.",
    "I am fine, thank you very much. " * 6,
    "Estoy bien.",
    "",
    "Bonjour " * 3,
    "I am fine, thank you.",
]


def test_sorted_batches_return_rewards_in_caller_order(tiny_rm):
    sorted_scorer = SequenceClassifierScorer(tiny_rm, batch_size=2, sort_by_length=True)
    unsorted_scorer = SequenceClassifierScorer(tiny_rm, batch_size=2, sort_by_length=False)
    single = SequenceClassifierScorer(tiny_rm, batch_size=1)
    a = sorted_scorer.score(PROMPTS, COMPLETIONS)
    b = unsorted_scorer.score(PROMPTS, COMPLETIONS)
    c = single.score(PROMPTS, COMPLETIONS)
    assert len(a) == len(COMPLETIONS)
    # padding and batch composition must not change a reward; order must be the caller's
    assert a == pytest.approx(c, abs=1e-4)
    assert b == pytest.approx(c, abs=1e-4)
    assert len({round(x, 5) for x in a}) > 1  # distinct inputs, distinct rewards


def test_truncation_is_recorded(tiny_rm):
    scorer = SequenceClassifierScorer(tiny_rm, batch_size=4, max_length=24)
    lengths = [len(x) for x in scorer.encode(PROMPTS, COMPLETIONS)]
    rewards, truncated = scorer.score_with_info(PROMPTS, COMPLETIONS)
    assert truncated == [n > 24 for n in lengths]
    assert any(truncated) and not all(truncated)
    assert len(rewards) == len(COMPLETIONS)


def test_config_builds_named_scorer_and_empty_input(tiny_rm):
    scorer = SequenceClassifierConfig(model_path=str(tiny_rm), name="arbiter").build()
    assert scorer.name == "arbiter"
    assert scorer.score([], []) == []
    with pytest.raises(ValueError):
        scorer.score(PROMPTS, COMPLETIONS[:2])


def test_rejects_a_multi_label_model(tmp_path, tiny_rm):
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_rm)
    config.num_labels = 3
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(tiny_rm).save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match="num_labels=3"):
        SequenceClassifierScorer(tmp_path / "clf")
