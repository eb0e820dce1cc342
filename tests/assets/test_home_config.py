"""A home remembers the config that built it: a run with a config that differs in the keys that
decide the data is refused (factory run and plain Dagster alike) unless forced."""

import json

import dagster as dg
import pytest
import yaml
from typer.testing import CliRunner

from assets.cli import app
from assets.config import config_path
from assets.io_manager import WarehouseIOManager
from assets.resources import FORCE_ENV, FactoryResource
from warehouse.housekeeping import ConfigMismatch, check_home_config, identity_diff, read_config_record


def _variant(tmp_path, name: str, change) -> str:
    """The tiny profile with `change` applied to its YAML, written next to the test."""
    data = yaml.safe_load(config_path("tiny").read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def _more_prompts(data):
    data["prompts"]["sources"][0]["max_per_language"] = 120


def test_the_first_run_records_the_config_and_a_differing_one_is_refused(tmp_path):
    home = tmp_path / "home"
    assert FactoryResource(home=str(home), config_path="tiny").check_home() is None
    record = read_config_record(home)
    assert record["source"].endswith("tiny.yaml") and record["identity"]["languages"] == ["en", "es", "de", "ja", "ru"]
    assert json.loads((home / "config.json").read_text())["config"]["name"] == "tiny"

    other = _variant(tmp_path, "more", _more_prompts)
    with pytest.raises(ConfigMismatch) as err:
        FactoryResource(home=str(home), config_path=other).check_home()
    message = str(err.value)
    assert "\n" not in message
    assert "prompts.sources.0.max_per_language (16 -> 120)" in message
    assert "--force" in message and f"{FORCE_ENV}=1" in message and "tiny.yaml" in message
    assert read_config_record(home)["fingerprint"] == record["fingerprint"]  # a refusal changes nothing


def test_keys_that_do_not_decide_the_data_may_change(tmp_path):
    home = tmp_path / "home"
    FactoryResource(home=str(home), config_path="tiny").check_home()
    before = read_config_record(home)

    def tune(data):
        data["training"]["sft"]["max_steps"] = 60
        data["arbiter"]["train"]["max_steps"] = 50
        data["generation"]["retries"] = 5
        data["models"]["embedded"]["torch_threads"] = 2
        data["merge"] = {"method": "ties"}

    assert FactoryResource(home=str(home), config_path=_variant(tmp_path, "tuned", tune)).check_home() is None
    assert read_config_record(home) == before


@pytest.mark.parametrize("change, key", [
    (lambda d: d.update(languages=["en", "es", "de", "ja"]), "languages"),
    (lambda d: d.update(seed=1), "seed"),
    (lambda d: d["prompts"].update(eval_fraction=0.5), "prompts.eval_fraction"),
    (lambda d: d["generation"].update(k=3), "generation.k"),
    (lambda d: d["models"]["embedded"].update(teacher_steps=80), "models.embedded.teacher_steps"),
])  # fmt: skip
def test_each_identity_key_is_checked(tmp_path, change, key):
    home = tmp_path / "home"
    FactoryResource(home=str(home), config_path="tiny").check_home()
    with pytest.raises(ConfigMismatch, match=rf"differs in keys that decide its data: {key} \("):
        FactoryResource(home=str(home), config_path=_variant(tmp_path, "changed", change)).check_home()


def test_forcing_records_the_new_config(tmp_path, monkeypatch):
    home = tmp_path / "home"
    FactoryResource(home=str(home), config_path="tiny").check_home()
    old = read_config_record(home)
    other = _variant(tmp_path, "more", _more_prompts)
    note = FactoryResource(home=str(home), config_path=other).check_home(force=True)
    assert note and "forced" in note
    new = read_config_record(home)
    assert new["source"] == other and new["fingerprint"] != old["fingerprint"]
    assert new["previous"] == [{k: old[k] for k in ("fingerprint", "source", "recorded_at")}]
    assert FactoryResource(home=str(home), config_path=other).check_home() is None
    with pytest.raises(ConfigMismatch):  # now the old config is the odd one
        FactoryResource(home=str(home), config_path="tiny").check_home()
    monkeypatch.setenv(FORCE_ENV, "1")
    assert FactoryResource(home=str(home), config_path="tiny").check_home() is not None
    assert read_config_record(home)["fingerprint"] == old["fingerprint"]


def test_keys_added_to_the_identity_later_do_not_refuse_older_homes(tmp_path):
    home = tmp_path / "home"
    check_home_config(home, {"languages": ["es"]}, {}, "a.yaml")
    assert check_home_config(home, {"languages": ["es"], "seed": 0}, {}, "a.yaml") is None
    assert read_config_record(home)["identity"] == {"languages": ["es"], "seed": 0}
    assert identity_diff({"t": [{"n": "a", "s": {"x": 1}}]}, {"t": [{"n": "a", "s": {"x": 2}}, {"n": "b"}]}) == [
        "t.0.s.x (1 -> 2)", "t.1.n ((absent) -> b)",
    ]


def test_plain_dagster_materialize_is_refused_until_forced(tmp_path, monkeypatch):
    """`dagster asset materialize` without FACTORY_CONFIG on a home built with the tiny profile:
    the default config's 120 prompts per language must not be mixed in."""
    from assets.prompts.assets import prompts

    home = tmp_path / "home"
    FactoryResource(home=str(home), config_path="tiny").check_home()
    monkeypatch.delenv("FACTORY_CONFIG", raising=False)  # the default config
    resources = {"env": FactoryResource(home=str(home)), "warehouse": WarehouseIOManager(home=str(home))}
    result = dg.materialize([prompts], partition_key="es", resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_failure)
    assert "differs in keys that decide its data" in str(failure.event_specific_data.error.to_string())
    assert not (home / "tables" / "prompts").exists()
    monkeypatch.setenv(FORCE_ENV, "1")
    assert dg.materialize([prompts], partition_key="es", resources=resources).success
    assert read_config_record(home)["source"].endswith("default.yaml")


def test_factory_run_refuses_in_one_line_and_force_goes_through(tmp_path, home):
    FactoryResource(home=str(home), config_path="tiny").check_home()
    other = _variant(tmp_path, "more", _more_prompts)
    args = ["run", "--select", "prompts", "--partition", "es", "--home", str(home), "--config", other]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1
    assert [line for line in refused.output.splitlines() if line.strip()] == [refused.output.strip()]
    assert "max_per_language (16 -> 120)" in refused.output and not (home / "tables" / "prompts").exists()
    forced = CliRunner().invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "forced: recorded config" in forced.output and read_config_record(home)["source"] == other
