"""Bad input at the command line: one red line on stderr and a non-zero exit, never a traceback,
and nothing created where the user did not mean to create anything."""

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from assets.cli import app
from warehouse.store import Warehouse


def _one_line_error(out, code: int = 2) -> str:
    assert out.exit_code == code, out.output
    assert "Traceback" not in out.output and len(out.stderr.strip().splitlines()) == 1, out.output
    return out.stderr


def test_read_only_commands_create_no_home_at_a_mistyped_path(tmp_path):
    typo = tmp_path / "typo" / "home"
    for command in (["status"], ["sql", "select 1"], ["lineage", "p_x"], ["publish"]):
        err = _one_line_error(CliRunner().invoke(app, [*command, "--home", str(typo)]))
        assert f"no warehouse at {typo}" in err and "factory demo --home" in err, command
    assert list(tmp_path.iterdir()) == []


def test_an_empty_home_or_config_option_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["status", "--home", ""], ["run", "--home", " "], ["config", "-c", ""]):
        err = _one_line_error(CliRunner().invoke(app, command))
        assert "is empty" in err, command
    assert list(tmp_path.iterdir()) == []


def test_config_touches_no_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACTORY_HOME", raising=False)
    out = CliRunner().invoke(app, ["config"])
    assert out.exit_code == 0, out.output
    assert list(tmp_path.iterdir()) == []  # no ./factory_home


def test_read_only_commands_work_on_an_existing_home(home):
    Warehouse(home).write_table("things", pl.DataFrame({"x": [1, 2]}))
    out = CliRunner().invoke(app, ["status", "--home", str(home)])
    assert out.exit_code == 0 and "things" in out.output, out.output


def test_publish_checks_the_repo_id_and_token_before_any_work_and_only_the_push_is_online(home, monkeypatch):
    import os

    Warehouse(home).write_table("things", pl.DataFrame({"x": [1]}))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    err = _one_line_error(CliRunner().invoke(app, ["publish", "--push-to-hub", "not a repo id", "--home", str(home)]))
    assert "'not a repo id' is not a hub repo id" in err
    assert "HF_HUB_OFFLINE" not in os.environ  # huggingface_hub reads it at import: the push path may not set it
    err = _one_line_error(CliRunner().invoke(app, ["publish", "--push-to-hub", "someone/pairs", "--home", str(home)]))
    assert "set HF_TOKEN" in err and "token=" not in err
    assert not (home / "published").exists()  # refused before the local publish
    assert CliRunner().invoke(app, ["status", "--home", str(home)]).exit_code == 0
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # every other command stays offline


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder that cannot hold new folders")
def test_a_home_under_a_folder_that_cannot_hold_folders_is_one_line():
    err = _one_line_error(CliRunner().invoke(app, ["run", "--select", "prompts", "--home", "/proc/nope/home"]))
    assert "cannot create" in err and "/proc/nope/home" in err


def test_a_folder_as_the_config_is_one_line(tmp_path):
    err = _one_line_error(CliRunner().invoke(app, ["config", "-c", str(tmp_path)]))
    assert "is a folder, not a YAML file" in err


def test_sql_prints_values_of_any_type_in_every_format(home):
    Warehouse(home).write_table("things", pl.DataFrame({"x": [1]}))
    query = "select map {'a': 1} m, 'x'::blob b, interval 1 day i, union_value(k := 1) u, [1, 2] l from things"
    outs = {f: CliRunner().invoke(app, ["sql", query, "--home", str(home), "-f", f]) for f in ("table", "csv", "json")}
    assert all(o.exit_code == 0 and "Traceback" not in o.output for o in outs.values()), {f: o.output for f, o in outs.items()}
    assert outs["csv"].stdout.splitlines() == ["m,b,i,u,l", '"{""a"":1}",x,1 day,1,"[1,2]"']
    assert json.loads(outs["json"].stdout) == [{"m": {"a": 1}, "b": "x", "i": "1 day", "u": "1", "l": [1, 2]}]
    joined = "select * from things a join (select 1 x, [7] l) b on a.x = b.x join (select 1 x, 'z'::blob l) c on a.x = c.x"
    repeated = CliRunner().invoke(app, ["sql", joined, "--home", str(home), "-f", "csv"])  # names repeat: columns by position
    assert repeated.exit_code == 0 and repeated.stdout.splitlines()[1:] == ["1,1,[7],1,z"], repeated.output
    big = CliRunner().invoke(app, ["sql", "select 340282366920938463463374607431768211455::uhugeint u", "--home", str(home), "-f", "csv"])
    assert big.stdout.splitlines()[1:] == ["340282366920938463463374607431768211455"], big.output  # not polars' wrap-around
    settings = CliRunner().invoke(app, ["sql", "select * from duckdb_settings()", "--home", str(home), "-f", "csv"])
    assert settings.exit_code == 0 and settings.stdout.startswith("name,value"), settings.output


def test_sql_options_and_statements_are_checked_before_the_query_runs(home):
    Warehouse(home).write_table("things", pl.DataFrame({"x": [1, 2, 3]}))

    def sql(*args):
        return CliRunner().invoke(app, ["sql", *args, "--home", str(home)])

    for bad in (["select 1", "-f", "xml"], ["select 1", "--limit", "0"], ["select 1", "--limit", "-5"]):
        out = sql(*bad)
        assert out.exit_code == 2 and "Traceback" not in out.output, (bad, out.output)
    assert "one query at a time" in _one_line_error(sql("select 1 as a; select 2 as b"))
    unknown = _one_line_error(sql("select * from thigns"), code=1)
    assert "thigns does not exist" in unknown and "tables: things" in unknown and "pg_" not in unknown
    assert sql("select x from things", "--limit", "1", "-f", "CSV").stdout.splitlines() == ["x", "1", "2", "3"]


def test_ui_on_a_port_in_use_is_one_line_and_starts_nothing(tmp_path, monkeypatch):
    import os
    import socket

    def no_exec(*args):
        raise AssertionError(f"dagster dev started: {args}")

    monkeypatch.setattr(os, "execv", no_exec)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _one_line_error(CliRunner().invoke(app, ["ui", "--port", str(port), "--home", str(tmp_path / "home")]))
    assert f"port {port} on 127.0.0.1 is taken" in err and "--port" in err
    assert list(tmp_path.iterdir()) == []
