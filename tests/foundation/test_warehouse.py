import duckdb
import polars as pl
import pytest

from warehouse.sql import WriteRefused, ensure_read_only
from warehouse.store import Warehouse


def _frame(n: int, lang: str = "es") -> pl.DataFrame:
    return pl.DataFrame({"prompt_id": [f"p_{i}" for i in range(n)], "language": [lang] * n, "x": list(range(n))})


def test_write_read_and_catalog_view(home):
    wh = Warehouse(home)
    wh.write_table("things", _frame(3, "es"), {"language": "es"})
    wh.write_table("things", _frame(2, "ja"), {"language": "ja"})
    assert (home / "tables/things/language=es/data.parquet").exists()
    assert wh.read_table("things").height == 5
    assert wh.read_table("things", {"language": "ja"}).height == 2
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    assert con.execute("select language, count(*) from things group by 1 order by 1").fetchall() == [("es", 3), ("ja", 2)]


def test_interrupted_write_leaves_previous_table_intact(home, monkeypatch):
    wh = Warehouse(home)
    wh.write_table("things", _frame(3), {"language": "es"})

    def crash(self, path, **kw):
        with open(path, "wb") as f:
            f.write(b"PAR1 half a file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        wh.write_table("things", _frame(10), {"language": "es"})
    monkeypatch.undo()
    assert wh.read_table("things").height == 3
    assert [p.name for p in (home / "tables/things/language=es").iterdir()] == ["data.parquet"]


WRITER = """
import sys, polars as pl
from warehouse.store import Warehouse
home, table = sys.argv[1], sys.argv[2]
wh = Warehouse(home)
for i in range(5):
    n = i + 1
    wh.write_table(table, pl.DataFrame({"language": ["es"] * n, "x": list(range(n))}), {"language": "es"})
    wh.refresh_catalog()
"""


def test_concurrent_writers_leave_a_readable_catalog(home):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(home), f"t{k}"]) for k in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    con = Warehouse(home).connect()
    assert con.execute("select count(*) from t0").fetchone() == (5,)
    assert con.execute("select count(*) from t1").fetchone() == (5,)


def test_quarantine_replaces_per_partition_and_lineage_appends(home):
    wh = Warehouse(home)
    rows = pl.DataFrame({"row_key": ["a", "b"], "reason": ["empty", "too long"], "payload": ["{}", "{}"]})
    wh.quarantine("prompts", "es", rows, "run1")
    wh.quarantine("prompts", "es", rows.head(1), "run2")  # a rerun replaces, never double counts
    wh.quarantine("prompts", "ja", rows, "run2")
    q = wh.sql("select partition, count(*) n from quarantine group by 1 order by 1")
    assert q.rows() == [("es", 1), ("ja", 2)]


@pytest.mark.parametrize(
    "query",
    ["drop view prompts", "insert into t values (1)", "select 1; delete from t", "CREATE TABLE x AS SELECT 1",
     "copy (select 1) to 'x.csv'", "attach 'x.db'", "  /* hi */ update t set a=1"],
)
def test_sql_refuses_writes(query):
    with pytest.raises(WriteRefused, match="read-only"):
        ensure_read_only(query)


@pytest.mark.parametrize("query", ["select 1", "with a as (select 1) select * from a", "describe prompts", "-- c\nSELECT 2"])
def test_sql_allows_reads(query):
    ensure_read_only(query)
