from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from assets.cli import app
from training.tiny import init_causal_lm, save_model, train_tokenizer


def test_factory_merge_runs_a_mergekit_yaml(tmp_path):
    tok = train_tokenizer(["hola mundo", "hello world", "bonjour le monde"] * 20, vocab_size=300)
    paths = []
    for seed in (1, 2):
        paths.append(save_model(init_causal_lm(tok, seed=seed, hidden_size=32, layers=1, heads=2), tok, tmp_path / f"m{seed}"))
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({
        "merge_method": "linear",
        "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(paths, (0.25, 0.75), strict=True)],
        "dtype": "float32",
    }))
    out = CliRunner().invoke(app, ["merge", str(cfg), str(tmp_path / "merged")])
    assert out.exit_code == 0, out.output
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    a = AutoModelForCausalLM.from_pretrained(paths[0]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(paths[1]).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(merged[name], 0.25 * a[name] + 0.75 * b[name], atol=1e-6)
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: linear\nmodels: [{model: x, parameters: {wieght: 1}}]\n")
    err = CliRunner().invoke(app, ["merge", str(bad), str(tmp_path / "o")])
    assert err.exit_code == 2 and "wieght" in err.output


def test_factory_merge_never_deletes_what_is_not_an_earlier_merge(tmp_path, monkeypatch):
    """The output folder is replaced whole, so it must be new, empty or an earlier merge's output: not
    a folder of other files, an input model, a folder holding one, or the current folder's parent."""
    tok = train_tokenizer(["hola mundo", "hello world"] * 20, vocab_size=300)
    models = tmp_path / "models"
    paths = [save_model(init_causal_lm(tok, seed=s, hidden_size=32, layers=1, heads=2), tok, models / f"m{s}") for s in (1, 2)]
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": str(p)} for p in paths], "dtype": "float32"}))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # `..` is tmp_path/work: it holds no model, only the current folder
    mine = tmp_path / "my_configs"  # a folder holding the merge config, named as the merge's own record
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me too")
    (mine / "merge_config.yaml").write_text(cfg.read_text())
    for out, why in ((precious, "not an earlier merge"), (paths[0], f"is {paths[0]}, an input"), (models, "an input of this merge"),
                     (mine, "merge_config.yaml, an input of this merge"),
                     (Path(".."), "holds the current folder"), (precious / "notes.txt", "is a file")):
        config = mine / "merge_config.yaml" if out == mine else cfg
        result = CliRunner().invoke(app, ["merge", str(config), str(out)])
        assert result.exit_code == 2 and why in result.output, (out, result.output)
    assert (precious / "notes.txt").read_text() == "keep me" and all((p / "config.json").exists() for p in paths)
    assert (mine / "notes.txt").read_text() == "keep me too"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["merge.yaml", "models", "my_configs", "precious", "work"]
    for _ in range(2):  # a new folder, then the same folder again: an earlier merge's output is replaced
        result = CliRunner().invoke(app, ["merge", str(cfg), str(tmp_path / "merged")])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "merge_config.yaml").exists()
    folder = CliRunner().invoke(app, ["merge", str(tmp_path), str(tmp_path / "o")])
    broken = tmp_path / "broken.yaml"
    broken.write_text("merge_method: [linear\n")
    garbled = CliRunner().invoke(app, ["merge", str(broken), str(tmp_path / "o")])
    assert folder.exit_code == 2 and "a folder, not a YAML file" in folder.output
    assert garbled.exit_code == 2 and "not valid YAML" in garbled.output
