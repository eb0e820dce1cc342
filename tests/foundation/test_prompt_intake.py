"""Prompt intake: every row read is kept or quarantined exactly once, with a code."""

from factory.langid import detect_many


def test_language_id_does_not_fail_a_batch_on_a_lone_surrogate():
    assert detect_many(["¿Dónde está la biblioteca municipal?", "bad \ud800 ¿dónde está la biblioteca?"], ["en", "es"]) == ["es", "es"]
