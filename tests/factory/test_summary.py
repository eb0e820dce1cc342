"""The end of `factory demo`: where the time went (from lineage) and the machine's facts."""

from datetime import UTC, datetime, timedelta

import polars as pl

from factory.machine import describe_machine, machine_facts
from factory.summary import step_timings
from warehouse.store import Warehouse


def _lineage(asset: str, partition: str | None, start: datetime, seconds: float) -> dict:
    return {"asset": asset, "table": asset, "partition": partition, "run_id": "r", "code_version": "c",
            "data_version": "d", "input_versions": "{}", "row_count": 1, "path": "p",
            "started_at": start, "finished_at": start + timedelta(seconds=seconds)}


def test_step_timings_sum_partitions_per_asset_since_a_time(tmp_path):
    wh = Warehouse(tmp_path / "home")
    t = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [_lineage("generations", "es", t, 3.0), _lineage("generations", "ja", t, 5.0),
            _lineage("sft_model", None, t, 10.0), _lineage("sft_model", None, t - timedelta(days=1), 99.0)]
    wh.append("lineage", pl.DataFrame(rows), "x")
    timings = step_timings(wh, since=t)
    by = {r["asset"]: r for r in timings.iter_rows(named=True)}
    assert by["generations"]["partitions"] == 2 and by["generations"]["seconds"] == 8.0 and by["generations"]["slowest"] == 5.0
    assert by["sft_model"]["partitions"] == 1 and by["sft_model"]["seconds"] == 10.0  # the older run is not counted
    assert timings["asset"].to_list()[0] == "sft_model"  # slowest first
    assert abs(timings["share"].sum() - 1.0) < 1e-6
    assert step_timings(Warehouse(tmp_path / "empty")).height == 0
    # a step's side output (written by the same step) is not counted twice
    wh.append("lineage", pl.DataFrame([_lineage("eval_answers_x", None, t, 10.0)]), "y")
    assert "eval_answers_x" in step_timings(wh, since=t)["asset"].to_list()
    assert "eval_answers_x" not in step_timings(wh, since=t, side_outputs=frozenset({"eval_answers_x"}))["asset"].to_list()


def test_machine_facts_name_the_cpu_and_cores():
    facts = machine_facts()
    assert facts["cpu"] and facts["cores"].split()[0].isdigit()
    assert all(isinstance(v, str) for v in facts.values())
    assert "cores" in describe_machine()


def test_demo_summary_prints_the_step_and_head_to_head_tables(tmp_path):
    from factory.summary import demo_summary

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "step_by_step.md").write_text("| stage | win_rate |\n|---|---|\n| sft_arbitrage | 0.54 |\n")
    (reports / "head_to_head.md").write_text("| stage | opponent | win_rate |\n|---|---|---|\n| dpo_offline | sft_arbitrage | 0.52 |\n")
    text = demo_summary(tmp_path)
    assert text.index("| sft_arbitrage | 0.54 |") < text.index("Head to head") < text.index("| dpo_offline | sft_arbitrage |")


def test_steps_in_flight_splits_the_span_by_how_many_steps_ran(tmp_path):
    from factory.summary import steps_in_flight

    wh = Warehouse(tmp_path / "home")
    assert steps_in_flight(wh) == {}
    t = datetime(2026, 1, 1, tzinfo=UTC)
    a = _lineage("generations", "es", t, 4.0)  # 0-4 s
    b = _lineage("scores", "es", t + timedelta(seconds=4), 2.0)  # 4-6 s: the same run and partition, one step
    c = _lineage("generations", "ja", t + timedelta(seconds=5), 3.0) | {"run_id": "r2"}  # 5-8 s
    d = _lineage("sft_model", None, t + timedelta(seconds=10), 5.0) | {"run_id": "r3"}  # 10-15 s, after a 2 s gap
    wh.append("lineage", pl.DataFrame([a, b, c, d]), "x")
    flight = steps_in_flight(wh, since=t)
    assert flight == {"none": 2.0, "one": 12.0, "two_or_more": 1.0}
    assert sum(flight.values()) == 15.0  # the whole span from the first start to the last end


def test_demo_summary_commands_name_the_home_and_config(tmp_path):
    """Every command under "Next:" runs against the demo's home when pasted; `ui` also with its config."""
    import shlex

    from factory.summary import demo_summary

    home = tmp_path / "my home"
    text = demo_summary(home, config_option=" -c tiny")
    commands = [line.split("#")[0] for line in text.split("Next:\n")[1].splitlines()]
    assert len(commands) == 3 and all(shlex.split(c)[-2:] == ["--home", str(home)] for c in commands), commands
    assert shlex.split(commands[2])[:4] == ["factory", "ui", "-c", "tiny"]
