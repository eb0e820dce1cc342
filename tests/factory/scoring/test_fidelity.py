from __future__ import annotations

import polars as pl
import pytest

from factory.scoring.fidelity import FidelityConfig, apply_fidelity, candidate_languages, detect_fidelity

EN = "The weather is lovely today and I would like to go for a long walk in the park."
ES = "El tiempo está precioso hoy y me gustaría dar un largo paseo por el parque."
DE = "Das Wetter ist heute herrlich und ich möchte einen langen Spaziergang im Park machen."


def test_detect_flags_wrong_language():
    out = detect_fidelity(["en", "es", "de", "de"], [EN, ES, DE, EN], FidelityConfig())
    assert out["detected_language"].to_list() == ["en", "es", "de", "en"]
    assert out["language_match"].to_list() == [True, True, True, False]


def test_empty_text_never_matches():
    out = detect_fidelity(["en"], [""], FidelityConfig())
    assert out["language_match"].to_list() == [False]


def test_candidates_are_run_languages_plus_shared():
    assert candidate_languages(FidelityConfig(), ["de"]) == ["de", "en", "es", "fr"]
    cfg = FidelityConfig(candidates=["ja", "ko"], extra_candidates=[])
    assert candidate_languages(cfg, ["de"]) == ["ja", "ko"]
    with pytest.raises(ValueError):
        candidate_languages(FidelityConfig(candidates=["xx"]), [])


SCORES = pl.DataFrame({"reward": [1.0, 2.0, 3.0], "language_match": [True, False, None]})


def test_exclude_marks_mismatches_unselectable_and_keeps_reward():
    out = apply_fidelity(SCORES, FidelityConfig(policy="exclude"))
    assert out["selectable"].to_list() == [True, False, False]
    assert out["reward"].to_list() == [1.0, 2.0, 3.0]


def test_penalize_subtracts_penalty_from_mismatches():
    out = apply_fidelity(SCORES, FidelityConfig(policy="penalize", penalty=0.5))
    assert out["reward"].to_list() == [1.0, 1.5, 2.5]
    assert out["selectable"].all()


def test_off_changes_nothing():
    out = apply_fidelity(SCORES, FidelityConfig(policy="off"))
    assert out["reward"].to_list() == [1.0, 2.0, 3.0]
    assert out["selectable"].all()
