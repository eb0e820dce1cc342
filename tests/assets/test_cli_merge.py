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
