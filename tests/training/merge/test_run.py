"""Every method end to end on tiny Llama checkpoints: values, shapes, dtypes, loadability, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.training.merge.reference import ref_dare, ref_linear, ref_slerp, ref_ties
from training.merge import merge_from_yaml, merge_models
from training.merge.compat import IncompatibleModelsError
from training.merge.run import _generator


def _state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _expected(method, m, params):
    """The merged state dict computed directly from whole state dicts and the method's definition."""
    base = _state(m["base"])
    xs = [_state(m["ft_a"]), _state(m["ft_b_sharded"]), _state(m["ft_c"])]
    w, dens = params["weights"], params["densities"]
    out = {}
    for name, b in base.items():
        ts = [x[name] for x in xs]
        if method == "linear":
            out[name] = ref_linear(ts, w)
        elif method == "ties":
            out[name] = ref_ties(ts, b, w, dens)
        elif method in ("dare_ties", "dare_linear"):
            out[name] = ref_dare(ts, b, w, dens, _generator(0, name), consensus=method == "dare_ties")
    return out


def _check_loads_and_generates(folder: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert next(model.parameters()).dtype == dtype
    ids = tok("hello world", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    return model


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "dare_linear"])
def test_every_method_matches_its_definition_and_loads(tiny_models, tmp_path, method):
    m = tiny_models
    params = {"weights": [0.5, 0.3, 0.2], "densities": [0.5, 0.6, 0.7]}
    info = merge_models(
        [m["ft_a"], m["ft_b_sharded"], m["ft_c"]],  # a sharded input among single-file ones
        method,
        tmp_path / "out",
        base=m["base"],
        max_shard_size="30KB",
        **params,
    )
    out = Path(info["output"])
    assert info["method"] == method and info["n_tensors"] == 20 and info["n_shards"] >= 2
    assert (out / "model.safetensors.index.json").exists() and (out / "merge_config.yaml").exists()
    got, want = _state(out), _expected(method, m, params)
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].shape == t.shape and got[name].dtype == torch.float32
        assert not torch.isnan(got[name]).any()
        torch.testing.assert_close(got[name], t, rtol=1e-5, atol=1e-6, msg=f"{method}: {name}")
    model = _check_loads_and_generates(out)
    torch.testing.assert_close(model.model.embed_tokens.weight.detach(), want["model.embed_tokens.weight"])
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_slerp_between_two_models_with_bfloat16_output(tiny_models, tmp_path):
    m = tiny_models
    info = merge_models([m["base"], m["far"]], "slerp", tmp_path / "out", base=m["base"], t=0.3, dtype="bfloat16")
    got, v0, v1 = _state(info["output"]), _state(m["base"]), _state(m["far"])
    for name in v0:
        assert got[name].dtype == torch.bfloat16
        want = ref_slerp(v0[name], v1[name], 0.3).float().to(torch.bfloat16)
        torch.testing.assert_close(got[name], want, rtol=1e-2, atol=1e-3)
    assert json.loads((Path(info["output"]) / "config.json").read_text())["dtype"] == "bfloat16"
    _check_loads_and_generates(Path(info["output"]), dtype=torch.bfloat16)


def test_untied_lm_head_is_merged(tiny_models, tmp_path):
    m = tiny_models
    info = merge_models([m["untied_base"], m["untied_ft"]], "linear", tmp_path / "out", weights=[1.0, 3.0])
    got, a, b = _state(info["output"]), _state(m["untied_base"]), _state(m["untied_ft"])
    assert "lm_head.weight" in got
    torch.testing.assert_close(got["lm_head.weight"], (a["lm_head.weight"] + 3 * b["lm_head.weight"]) / 4)
    _check_loads_and_generates(Path(info["output"]))


@pytest.mark.parametrize(
    ("other", "match"),
    [
        ("wide", "shape"),
        ("other_vocab", "tokenizer vocabularies differ"),
        ("untied_ft", "ties word embeddings"),
    ],
)
def test_incompatible_models_are_refused(tiny_models, tmp_path, other, match):
    with pytest.raises(IncompatibleModelsError, match=match):
        merge_models([tiny_models["ft_a"], tiny_models[other]], "linear", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def _write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("method", ["linear", "slerp", "ties", "dare_ties", "dare_linear"])
def test_mergekit_yaml_runs_end_to_end(tiny_models, tmp_path, method):
    m = tiny_models
    if method == "slerp":
        models = [{"model": str(m["base"])}, {"model": str(m["far"])}]
        params = {"t": 0.5}
    else:
        models = [
            {"model": str(m["ft_a"]), "parameters": {"weight": 0.7, "density": 0.5}},
            {"model": str(m["ft_b"]), "parameters": {"weight": 0.3, "density": 0.5}},
        ]
        params = {"normalize": True} if method != "linear" else {}
    config = {
        "merge_method": method,
        "base_model": str(m["base"]),
        "models": models,
        "parameters": params,
        "dtype": "float16",
    }
    if method == "linear":
        config["parameters"] = {"int8_mask": True}
    cfg = _write_yaml(tmp_path / "merge.yaml", config)
    if method == "linear":
        with pytest.warns(UserWarning, match="int8_mask is ignored"):
            info = merge_from_yaml(cfg, tmp_path / "out")
    else:
        info = merge_from_yaml(cfg, tmp_path / "out")
    out = Path(info["output"])
    state = _state(out)
    assert info["method"] == method and len(state) == 20
    assert all(t.dtype == torch.float16 and torch.isfinite(t).all() for t in state.values())
    saved = yaml.safe_load((out / "merge_config.yaml").read_text())
    assert saved["merge_method"] == method and saved["resolved"]["base_model"] == str(m["base"])
    _check_loads_and_generates(out, dtype=torch.float16)


def test_yaml_errors_name_the_bad_key(tiny_models, tmp_path):
    m = tiny_models
    bad = {
        "merge_method": "ties",
        "base_model": str(m["base"]),
        "models": [{"model": str(m["ft_a"]), "parameters": {"densty": 0.5}}],
    }
    with pytest.raises(ValueError, match=r"models\.0\.parameters\.densty"):
        merge_from_yaml(_write_yaml(tmp_path / "a.yaml", bad), tmp_path / "out")
    no_base = {"merge_method": "dare_ties", "models": [{"model": str(m["ft_a"])}]}
    with pytest.raises(ValueError, match="needs base_model"):
        merge_from_yaml(_write_yaml(tmp_path / "b.yaml", no_base), tmp_path / "out")
    three = {"merge_method": "slerp", "models": [{"model": str(m[k])} for k in ("ft_a", "ft_b", "ft_c")]}
    with pytest.raises(ValueError, match="exactly 2 models"):
        merge_from_yaml(_write_yaml(tmp_path / "c.yaml", three), tmp_path / "out")
    unknown = {"merge_method": "frankenmerge", "models": [{"model": str(m["ft_a"])}]}
    with pytest.raises(ValueError, match="unknown merge_method 'frankenmerge'"):
        merge_from_yaml(_write_yaml(tmp_path / "d.yaml", unknown), tmp_path / "out")
    missing = {"merge_method": "linear", "models": [{"model": "does/not/exist"}]}
    with pytest.raises(FileNotFoundError, match="does/not/exist"):
        merge_from_yaml(_write_yaml(tmp_path / "e.yaml", missing), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_relative_paths_resolve_against_the_yaml_folder_and_output_is_replaced(tiny_models, tmp_path):
    m = tiny_models
    root = m["ft_a"].parent
    config = {"merge_method": "linear", "models": [{"model": "ft_a"}, {"model": "ft_c"}]}
    cfg = _write_yaml(root / "rel.yaml", config)
    out = tmp_path / "out"
    out.mkdir()
    (out / "merge_config.yaml").write_text("merge_method: linear\n")  # an earlier merge's output: replaced whole
    (out / "config.json").write_text("{}")
    (out / "stale.txt").write_text("old")
    info = merge_from_yaml(cfg, out)
    assert not (out / "stale.txt").exists()
    assert info["inputs"] == [str(m["ft_a"].resolve()), str(m["ft_c"].resolve())]
    a, c, got = _state(m["ft_a"]), _state(m["ft_c"]), _state(out)
    torch.testing.assert_close(got["model.norm.weight"], (a["model.norm.weight"] + c["model.norm.weight"]) / 2)


def test_integer_and_scalar_tensors_are_copied_from_the_first_model(tmp_path):
    from safetensors.torch import save_file

    folders = []
    for i, scale in enumerate((1.0, 3.0)):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        save_file(
            {
                "w": torch.full((4, 3), scale),
                "step": torch.tensor(7 + i, dtype=torch.int64),  # 0-dim integer buffer
                "ids": torch.arange(5, dtype=torch.int32) * (i + 1),
            },
            folder / "model.safetensors",
        )
        folders.append(folder)
    merge_models(folders, "linear", tmp_path / "out")
    out = _state(tmp_path / "out")
    assert torch.equal(out["w"], torch.full((4, 3), 2.0))
    assert out["step"].shape == () and int(out["step"]) == 7
    assert torch.equal(out["ids"], torch.arange(5, dtype=torch.int32))


@pytest.mark.parametrize("method", ["linear", "ties", "dare_linear"])
def test_merge_with_settings_is_merge_models_with_the_run_config_section(tiny_models, tmp_path, method):
    from training.merge import MergeSettings, get_method, merge_with_settings

    m = tiny_models
    settings = MergeSettings(method=method, weights={"a": 2.0}, density=0.6, seed=3)
    info = merge_with_settings(settings, {"a": m["ft_a"], "c": m["ft_c"]}, tmp_path / "s", base=m["base"])
    needs = get_method(method).needs_base
    direct = merge_models(
        [m["ft_a"], m["ft_c"]],
        method,
        tmp_path / "d",
        weights=[2.0, 1.0],
        base=m["base"] if needs else None,
        densities=[0.6, 0.6] if needs else None,
        seed=3,
    )
    assert info["base"] == direct["base"] and (info["base"] is None) == (not needs)
    got, want = _state(info["output"]), _state(direct["output"])
    assert all(torch.equal(got[k], want[k]) for k in want)
    if needs:
        with pytest.raises(ValueError, match="needs a base model"):
            merge_with_settings(settings, {"a": m["ft_a"]}, tmp_path / "x")
