"""The command line as a user meets it: exit codes, one-line failures, output without a terminal."""

import polars as pl
import pytest
from typer.testing import CliRunner

from assets.cli import app
from warehouse.store import Warehouse


def test_lineage_of_a_missing_row_exits_non_zero(home):
    Warehouse(home).write_table("things", pl.DataFrame({"x": [1]}))
    runner = CliRunner()
    out = runner.invoke(app, ["lineage", "ck_doesnotexist", "--home", str(home)])
    assert out.exit_code == 1 and "not found" in out.output
    assert runner.invoke(app, ["lineage", "zz_nothing", "--home", str(home)]).exit_code == 2


def test_sql_pivot_is_a_read_and_copy_is_refused(home, tmp_path):
    Warehouse(home).write_table("things", pl.DataFrame({"language": ["en", "es", "es"], "x": [1, 2, 3]}))
    runner = CliRunner()
    out = runner.invoke(app, ["sql", "PIVOT things ON language USING sum(x)", "--home", str(home), "-f", "csv"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == ["en,es", "1,5"]
    target = tmp_path / "out.csv"
    out = runner.invoke(app, ["sql", f"select '--'; COPY (select 42 as x) TO '{target}'", "--home", str(home)])
    assert out.exit_code == 2 and "read-only" in out.output and not target.exists()


def test_a_failed_step_is_one_line_naming_asset_partition_and_cause(home):
    out = CliRunner().invoke(app, ["run", "--select", "generations", "--partition", "es", "--home", str(home)])
    assert out.exit_code == 1
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) <= 3, out.output  # no stack trace
    assert "generations [es] failed" in out.output and "has not been materialized" in out.output
    assert f"`factory run --select +generations -c tiny --home {home}`" in out.output  # pasted, it runs here
    assert f"`factory ui -c tiny --home {home}`" in out.output
    assert "Traceback" not in out.output
    verbose = CliRunner().invoke(app, ["run", "--select", "generations", "--partition", "es", "--home", str(home), "-v"])
    assert verbose.exit_code == 1 and "MissingUpstream" in verbose.output


def test_progress_without_a_terminal_is_one_line_per_step(home):
    out = CliRunner().invoke(app, ["run", "--select", "prompts", "--partition", "es", "--partition", "en", "--home", str(home)])
    assert out.exit_code == 0, out.output
    assert "\r" not in out.output
    steps = [line.split(" done")[0] for line in out.output.splitlines() if line.startswith("[")]
    assert [s.split()[0] for s in steps] == ["[1/2]", "[2/2]"]  # numbered as they finish (in parallel by default)
    assert sorted(s.split(" ", 1)[1] for s in steps) == ["prompts [en]", "prompts [es]"]


def test_runs_are_named_after_their_step(home):
    import dagster as dg

    CliRunner().invoke(app, ["run", "--select", "prompts", "--partition", "es", "--home", str(home)])
    inst = dg.DagsterInstance.from_config(str(home / ".dagster"))
    names = {r.job_name for r in inst.get_runs()}
    assert names == {"prompts"}


def test_a_home_with_glob_characters_runs_and_answers_sql(tmp_path):
    home = tmp_path / "run [1]"
    runner = CliRunner()
    out = runner.invoke(app, ["run", "--select", "prompts", "--partition", "es", "--home", str(home)])
    assert out.exit_code == 0, out.output
    n = runner.invoke(app, ["sql", "select count(*) as n from prompts", "--home", str(home), "-f", "csv"])
    assert n.exit_code == 0, n.output
    assert int(n.output.splitlines()[1]) == Warehouse(home).read_table("prompts").height > 0


def test_a_home_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for command in (["status"], ["sql", "select 1"], ["lineage", "p_x"], ["run", "--select", "prompts"]):
        out = CliRunner().invoke(app, [*command, "--home", str(blocker / "home")])
        assert out.exit_code == 2, (command, out.output)
        assert "Traceback" not in out.output and len(out.output.strip().splitlines()) <= 2, out.output


def test_a_run_that_fails_before_any_step_names_its_cause(home, monkeypatch):
    from assets.resources import FactoryResource
    from assets.run import StepFailed, materialize_selection

    def broken(self, context):
        raise RuntimeError("the resource could not start: disk on fire")

    monkeypatch.setattr(FactoryResource, "setup_for_execution", broken)
    with pytest.raises(StepFailed) as info:
        materialize_selection("prompts", ["es"], echo=lambda _: None)
    assert "disk on fire" in str(info.value) and "see the Dagster run log" not in str(info.value)


def test_hints_name_the_home_and_a_config_other_than_the_default(tmp_path, monkeypatch):
    from assets.config import DEFAULT_CONFIG, config_option
    from warehouse.home import home_option

    monkeypatch.setenv("FACTORY_CONFIG", "tiny")
    assert config_option() == " -c tiny"
    monkeypatch.setenv("FACTORY_CONFIG", str(DEFAULT_CONFIG))
    assert config_option() == ""
    mine = tmp_path / "my run.yaml"
    monkeypatch.setenv("FACTORY_CONFIG", str(mine))
    assert config_option() == f" -c '{mine}'"
    monkeypatch.delenv("FACTORY_HOME", raising=False)
    assert home_option() == ""
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "a home"))
    assert home_option() == f" --home '{tmp_path / 'a home'}'"


def test_config_help_lists_every_shipped_profile():
    from assets.profiles import CONFIG_DIR

    text = " ".join(CliRunner().invoke(app, ["run", "--help"], terminal_width=400).output.split())
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert "smol" in names and all(f"{n}," in text or f"{n})" in text for n in names), text
