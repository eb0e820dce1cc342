import pytest
import yaml
from typer.testing import CliRunner

from assets.run import plan, resolve_selection, toposort
from factory.cli import app

# a -> b -> c, with b partitioned; d depends on a only
GRAPH = {"a": (set(), True), "b": ({"a"}, False), "c": ({"b"}, True), "d": ({"a"}, True)}


def test_toposort_runs_dependencies_first():
    order = toposort(GRAPH)
    assert order.index("a") < order.index("b") < order.index("c")
    assert order.index("a") < order.index("d")


def test_selection_syntax():
    assert resolve_selection("c", GRAPH) == ["c"]
    assert set(resolve_selection("+c", GRAPH)) == {"a", "b", "c"}
    assert set(resolve_selection("a+", GRAPH)) == {"a", "b", "c", "d"}
    assert resolve_selection(None, GRAPH) == toposort(GRAPH)
    with pytest.raises(ValueError, match="unknown asset 'zz'"):
        resolve_selection("zz", GRAPH)


def test_plan_groups_partitioned_assets_per_language():
    steps = plan(["a", "d", "b", "c"], GRAPH, ["es", "ja"])
    assert [(s.assets, s.partition) for s in steps] == [
        (["a", "d"], "es"), (["a", "d"], "ja"), (["b"], None), (["c"], "es"), (["c"], "ja"),
    ]


def test_factory_config_prints_defaults_and_rejects_bad_keys(tmp_path):
    out = CliRunner().invoke(app, ["config", "--config", "tiny"])
    assert out.exit_code == 0, out.output
    shown = yaml.safe_load(out.output)
    assert shown["languages"] == ["en", "es", "de", "ja", "ru"]
    assert shown["training"]["online"]["betas"] == [0.1, 0.1, 0.1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("languages: [en, es]\nrouting: {}\n")
    err = CliRunner().invoke(app, ["config", "--config", str(bad)])
    assert err.exit_code == 2 and "routing: unknown key" in err.output
