"""What `factory status` and `factory lineage` print: counts of languages that are languages, and
lineage lines that say what a value is."""

from datetime import UTC, datetime

import polars as pl

from warehouse import schemas
from warehouse.lineage import checkpoint_node
from warehouse.status import status_frame
from warehouse.store import Warehouse


def test_status_counts_languages_not_the_macro_row_and_quarantine_partitions(home):
    wh = Warehouse(home)
    rates = [{"stage": "sft", "model": "m", "baseline": "b", "language": lang, "wins": 1, "ties": 0, "losses": 0, "win_rate": 1.0,
              "run_id": "r"} for lang in ("de", "fr", "all")]
    wh.write_table("win_rates", pl.DataFrame(rates, schema=schemas.WIN_RATES))
    for part in ("de", "ja", None, schemas.UNROUTED):  # None: an unpartitioned step's rows, partition `all`
        wh.quarantine("some_step", part, pl.DataFrame({"row_key": ["x"], "reason": ["bad: x"], "payload": ["{}"]}), "r")
    languages = dict(status_frame(wh).select("table", "languages").iter_rows())
    assert languages["win_rates"] == 2  # de, fr: not the macro-average row `all`
    assert languages["quarantine"] == 2  # de, ja: its partitions, not `all` or `unrouted`


def test_checkpoint_lineage_says_versions_and_lists_apart(home):
    wh = Warehouse(home)
    row = {"checkpoint_id": "ck_1", "stage": "cluster", "name": "east_asian", "path": "models/x", "parents": [],
           "datasets": '{"languages": ["ja", "ko"], "preference_pairs": "3c3bf5d9606cf0cb", "strategy": "reward_routing"}',
           "config": "{}", "metrics": "{}", "created_at": datetime.now(UTC), "run_id": "r"}
    wh.write_table("checkpoints", pl.DataFrame([row], schema=schemas.CHECKPOINTS))
    lines = [c.label for c in checkpoint_node(wh, "ck_1").children]
    assert "languages: ja, ko" in lines
    assert "trained on preference_pairs version 3c3bf5d9606cf0cb" in lines
    assert "strategy: reward_routing" in lines  # not a version


def test_conform_refuses_fractional_values_for_integer_columns():
    rates = {"stage": ["sft"], "model": ["m"], "baseline": ["b"], "language": ["de"], "wins": [2.0], "ties": [1.0], "losses": [0.5],
             "win_rate": [0.5], "ci_low": [0.1], "ci_high": [0.9], "run_id": ["r"]}
    import pytest

    with pytest.raises(ValueError, match="fractional values: losses"):
        schemas.conform(pl.DataFrame(rates), schemas.WIN_RATES)
    whole = schemas.conform(pl.DataFrame(rates | {"losses": [0.0]}), schemas.WIN_RATES)  # whole floats cast as before
    assert whole["losses"].dtype == pl.Int64 and whole["wins"].to_list() == [2]
