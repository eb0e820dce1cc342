import unicodedata

import pytest

from factory import ids
from factory.languages import CLUSTERS, LANGUAGES, SHARED_LANGUAGES, cluster_of, own_languages, validate_code


def test_all_aya_languages_defined_once():
    assert len(LANGUAGES) == 24  # 23 languages, Chinese in two scripts
    assert {"ar", "zh-Hans", "zh-Hant", "he", "fa", "vi", "uk"} <= set(LANGUAGES)


def test_every_cluster_shares_en_es_fr_and_partitions_the_rest():
    owned = [c for cl in CLUSTERS for c in own_languages(cl)]
    assert sorted(owned) == sorted(set(LANGUAGES) - set(SHARED_LANGUAGES))
    for members in CLUSTERS.values():
        assert set(SHARED_LANGUAGES) <= set(members)
    assert cluster_of("ru") == cluster_of("uk")


def test_unknown_code_is_named_in_the_error():
    with pytest.raises(ValueError, match="'xx'"):
        validate_code("xx")


def test_prompt_id_is_stable_and_nfc_normalised():
    composed = "café"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert ids.prompt_id("fr", composed) == ids.prompt_id("fr", decomposed + "  ")
    assert ids.prompt_id("fr", composed) != ids.prompt_id("es", composed)


def test_completion_id_depends_on_every_part():
    base = ids.completion_id("p_1", "t", {"temperature": 0.7}, 0)
    assert base == ids.completion_id("p_1", "t", {"temperature": 0.7}, 0)
    assert len({base, ids.completion_id("p_1", "t", {"temperature": 0.7}, 1),
                ids.completion_id("p_1", "u", {"temperature": 0.7}, 0),
                ids.completion_id("p_1", "t", {"temperature": 0.8}, 0)}) == 4
