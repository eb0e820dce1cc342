import dagster as dg
import pytest
import yaml
from typer.testing import CliRunner

from assets.cli import app
from assets.definitions import build_definitions
from assets.run import Step, dagster_selection, plan, run_steps, select


@pytest.fixture(scope="module")
def graph():
    return build_definitions("tiny").resolve_asset_graph()


def names(keys):
    return [k.to_user_string() for k in keys]


def test_the_shorthand_becomes_dagster_selection_syntax():
    assert dagster_selection("scores") == 'key:"scores"'
    assert dagster_selection("+scores, prompts") == '+key:"scores" or key:"prompts"'
    assert dagster_selection("arbiter+") == 'key:"arbiter"+'
    assert dagster_selection("2+dpo_online_round_1+1") == '2+key:"dpo_online_round_1"+1'
    assert dagster_selection(None) == dagster_selection(" * ") == "*"
    assert dagster_selection('group:training and not key:"merged_model"') == 'group:training and not key:"merged_model"'


def test_selection_is_resolved_by_dagster_dependencies_first(graph):
    up = names(select("+scores", graph))  # every ancestor, not only the parents
    assert set(up) == {"model_sources", "prompts", "embedded_pool", "arbiter", "generations", "scores"}
    assert up.index("prompts") < up.index("embedded_pool") < up.index("generations") < up.index("scores")
    assert {"router", "selections", "win_rates"} <= set(names(select("scores+", graph)))
    assert "prompts" not in names(select("scores+", graph))
    assert names(select("prompts,scores", graph)) == ["prompts", "scores"]
    assert set(names(select("group:training", graph))) >= {"sft_model", "merged_model", "dpo_online_round_3"}
    assert "arbiter" not in names(select('+key:"scores" and not key:"arbiter"', graph))
    assert len(select(None, graph)) == len(graph.get_all_asset_keys())
    with pytest.raises(ValueError, match="unknown asset 'zz'"):
        select("+zz", graph)
    with pytest.raises(ValueError, match="matches no asset"):
        select('key:"nothing_*"', graph)
    with pytest.raises(ValueError, match="invalid selection"):
        select("scores ((", graph)


def test_plan_runs_language_chains_per_partition_and_waits_for_every_partition(graph):
    steps = plan(graph, select(None, graph), ["es", "ja"])
    at = {(s.label): i for i, s in enumerate(steps)}
    labels = list(at)
    assert "selections, preference_pairs [es]" in labels  # one run per language for the chain
    # scores also needs the arbiter, which generations does not: generations runs beside the arbiter
    assert "generations [es]" in labels and "scores [ja]" in labels
    assert at["arbiter"] not in steps[at["generations [es]"]].after
    # the same language's upstream partition only; an unpartitioned asset waits for every partition
    assert at["generations [es]"] in steps[at["scores [es]"]].after
    assert at["generations [ja]"] not in steps[at["scores [es]"]].after
    assert {at["scores [es]"], at["scores [ja]"]} <= steps[at["router"]].after
    for i, step in enumerate(steps):
        assert all(j < i for j in step.after)  # the plan's order is a valid order
    assert all(s.partition is None for s in steps if s.assets == ["router"])
    assert len({(tuple(s.assets), s.partition) for s in steps}) == len(steps)


def test_plan_of_a_partition_subset(graph):
    steps = plan(graph, select("embedded_pool,prompts", graph), ["es"])
    assert [(s.label, s.after) for s in steps] == [("prompts [es]", frozenset()), ("embedded_pool", {0})]


def test_steps_start_when_what_they_need_is_done_and_a_failure_stops_new_ones():
    from concurrent.futures import Future

    from assets.run import Outcome

    steps = [Step(["a"], "es"), Step(["a"], "ja"), Step(["b"], None, frozenset({0, 1})), Step(["c"], None, frozenset({2}))]
    order = []

    def submit(step):
        order.append(step.label)
        future = Future()
        future.set_result(Outcome("r", 0.0, ("b", "boom", "") if step.assets == ["b"] else None))
        return future

    failure = run_steps(steps, submit, 2, lambda s: None, lambda s, o: None)
    assert order == ["a [es]", "a [ja]", "b"]  # c never starts after b failed
    assert failure.failure == ("b", "boom", "")


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


def test_definitions_are_built_from_a_config_and_a_home(tmp_path):
    other = tmp_path / "two.yaml"
    other.write_text("languages: [de, ja]\n")
    defs = build_definitions(str(other), str(tmp_path / "h"))
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("scores")).partitions_def.get_partition_keys() == ["de", "ja"]
    assert defs.resources["env"].home == str(tmp_path / "h")
    assert defs.resources["warehouse"].home == str(tmp_path / "h")
