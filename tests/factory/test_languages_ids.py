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


def test_completion_id_names_the_model_that_produced_it():
    sampling = {"temperature": 0.7}
    # without a model, ids are those of before the model was part of them (a literal, not recomputed)
    assert ids.completion_id("p_1", "t", sampling, 0) == "c_6be6eb2bc9a69621"
    a = ids.completion_id("p_1", "t", sampling, 0, model={"backend": "transformers", "weights": "aa"})
    b = ids.completion_id("p_1", "t", sampling, 0, model={"backend": "transformers", "weights": "bb"})
    assert len({a, b, ids.completion_id("p_1", "t", sampling, 0)}) == 3
    assert a == ids.completion_id("p_1", "t", sampling, 0, model={"weights": "aa", "backend": "transformers"})


def _fake_model(folder):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "tokenizer.json").write_text("{}")
    (folder / "factory_build.json").write_text('{"metrics": 1}')
    (folder / "README.md").write_text("a model")
    return folder


def test_weights_digest_is_the_content_not_the_path_nor_the_reports(tmp_path):
    folder = _fake_model(tmp_path / "m")
    digest = ids.weights_digest(folder)
    assert [p.name for p in ids.model_files(folder)] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert ids.weights_digest(_fake_model(tmp_path / "copy" / "m2")) == digest
    (folder / "factory_build.json").write_text('{"metrics": 2}')
    (folder / "README.md").write_text("rewritten")
    assert ids.weights_digest(folder) == digest
    (folder / "config.json").write_text('{"hidden_size": 16}')
    assert ids.weights_digest(folder) != digest
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model files"):
        ids.weights_digest(tmp_path / "empty")


def test_weights_digest_is_cached_and_sees_a_same_size_rewrite(tmp_path, monkeypatch):
    import os
    import time

    folder = _fake_model(tmp_path / "m")
    hashed = []
    real = ids._file_digest
    monkeypatch.setattr(ids, "_file_digest", lambda p: hashed.append(p.name) or real(p))
    digest = ids.weights_digest(folder)
    assert sorted(hashed) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (folder / ids.DIGEST_CACHE).exists()
    hashed.clear()
    assert ids.weights_digest(folder) == digest and hashed == []  # unchanged: nothing re-read

    weights = folder / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"\x01" * 64)  # same size, and the old mtime put back
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    deadline = time.monotonic() + 5
    while weights.stat().st_ctime_ns == st.st_ctime_ns and time.monotonic() < deadline:
        time.sleep(0.01)  # the kernel's clock is coarse: touch again until ctime has moved on
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_mtime_ns == st.st_mtime_ns
    assert ids.weights_digest(folder) != digest and hashed == ["model.safetensors"]


def test_weights_digest_works_where_the_cache_cannot_be_written(tmp_path):
    folder = _fake_model(tmp_path / "m")
    (folder / ids.DIGEST_CACHE).mkdir()  # neither readable nor replaceable as a file
    assert ids.weights_digest(folder) == ids.weights_digest(_fake_model(tmp_path / "m2"))
    gguf = tmp_path / "single" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\x00" * 16)
    assert ids.model_files(gguf) == [gguf] and len(ids.weights_digest(gguf)) == 32
