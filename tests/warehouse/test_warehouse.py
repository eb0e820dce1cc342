"""The warehouse's contract, on both backends (`any_home`: a local folder, then a prefix on a real
S3 server): atomic writes, interrupted writes, concurrent writers, quarantine replaced on rerun,
read-only SQL. Tests that are about a local folder itself (copying it, its catalog file) use `home`."""

import duckdb
import polars as pl
import pytest

from warehouse.sql import WriteRefused
from warehouse.store import Warehouse


def _frame(n: int, lang: str = "es") -> pl.DataFrame:
    return pl.DataFrame({"prompt_id": [f"p_{i}" for i in range(n)], "language": [lang] * n, "x": list(range(n))})


def test_write_read_and_catalog_view(any_home):
    wh = Warehouse(any_home)
    wh.write_table("things", _frame(3, "es"), {"language": "es"})
    wh.write_table("things", _frame(2, "ja"), {"language": "ja"})
    rels = [wh.rel(f) for f in wh.files("things")]
    assert [r.startswith(f"tables/things/language={lang}/") for r, lang in zip(rels, ["es", "ja"], strict=True)] == [True] * 2
    assert wh.read_table("things").height == 5
    assert wh.read_table("things", {"language": "ja"}).height == 2
    con = wh.connect()
    assert con.execute("select language, count(*) from things group by 1 order by 1").fetchall() == [("es", 3), ("ja", 2)]


def test_a_local_catalog_file_serves_any_duckdb_client(home):
    wh = Warehouse(home)
    wh.write_table("things", _frame(3, "es"), {"language": "es"})
    assert (home / "tables/things/language=es/data.parquet").exists()
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    assert con.execute("select count(*) from things").fetchone() == (3,)


def test_rerun_replaces_a_partition_and_versions_are_recorded_at_write(any_home):
    from warehouse.fs import new_digest

    wh = Warehouse(any_home)
    first = wh.write_table("things", _frame(3), {"language": "es"})
    again = wh.write_table("things", _frame(4), {"language": "es"})  # a rerun: replaces, never doubles
    assert wh.read_table("things").height == 4 and wh.sql("select count(*) from things").item() == 4
    assert len(wh.files("things")) == 1
    assert wh.version("things", {"language": "es"}) == again.data_version != first.data_version
    digest = new_digest()  # the recorded version is the digest of the bytes that are there
    digest.update(_raw(wh, wh.files("things")[0]))
    assert digest.hexdigest() == again.data_version


def _raw(wh: Warehouse, f) -> bytes:
    return wh.fs.cat_file(str(f)) if wh.url.startswith("s3://") else f.read_bytes()


def test_interrupted_write_leaves_previous_table_intact(any_home, monkeypatch):
    wh = Warehouse(any_home)
    wh.write_table("things", _frame(3), {"language": "es"})
    before = (wh.files("things"), wh.version("things"))

    def crash(self, target, **kw):
        target.write(b"PAR1 half a file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        wh.write_table("things", _frame(10), {"language": "es"})
    monkeypatch.undo()
    assert wh.read_table("things").height == 3
    assert (wh.files("things"), wh.version("things")) == before
    if not wh.url.startswith("s3://"):  # no temp file left beside the table
        assert [p.name for p in wh.files("things")[0].parent.iterdir()] == ["data.parquet"]
    else:  # nothing of the killed write was uploaded
        assert len(wh.fs.find(wh.url + "/tables/things/language=es/_data/")) == 1


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


def test_concurrent_writers_leave_a_readable_catalog(any_home):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, any_home, f"t{k}"]) for k in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    con = Warehouse(any_home).connect()
    assert con.execute("select count(*) from t0").fetchone() == (5,)
    assert con.execute("select count(*) from t1").fetchone() == (5,)


SAME_PARTITION = """
import sys, polars as pl
from warehouse.store import Warehouse
home, n = sys.argv[1], int(sys.argv[2])
wh = Warehouse(home)
for i in range(4):
    wh.write_table("shared", pl.DataFrame({"language": ["es"] * n, "writer": [n] * n}), {"language": "es"})
"""


def test_two_writers_of_one_partition_leave_one_whole_write(any_home):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", SAME_PARTITION, any_home, str(n)]) for n in (3, 5)]
    assert [p.wait(120) for p in procs] == [0, 0]
    wh = Warehouse(any_home)
    df = wh.read_table("shared")
    assert df["writer"].n_unique() == 1 and df.height == df["writer"][0]  # one writer's rows, all of them
    assert wh.sql("select count(*) from shared").item() == df.height


def test_quarantine_replaces_per_partition_and_lineage_appends(any_home):
    wh = Warehouse(any_home)
    rows = pl.DataFrame({"row_key": ["a", "b"], "reason": ["empty", "too long"], "payload": ["{}", "{}"]})
    wh.quarantine("prompts", "es", rows, "run1")
    wh.quarantine("prompts", "es", rows.head(1), "run2")  # a rerun replaces, never double counts
    wh.quarantine("prompts", "ja", rows, "run2")
    q = wh.sql("select partition, count(*) n from quarantine group by 1 order by 1")
    assert q.rows() == [("es", 1), ("ja", 2)]
    assert wh.read_table("quarantine", {"asset": "prompts", "partition": "es"})["run_id"].to_list() == ["run2"]


def test_lineage_appends_and_traces_a_row(any_home):
    from datetime import UTC, datetime

    from warehouse.lineage import trace

    wh = Warehouse(any_home)
    prompts = pl.DataFrame({"prompt_id": ["p_1"], "language": ["es"], "text": ["hola"], "split": ["train"],
                            "source": ["test"], "origin": ["native"], "references": [["¡hola!"]],
                            "run_id": ["run-1"]})
    for run in ("run-1", "run-2"):  # a rerun adds a lineage row; the table is replaced
        result = wh.write_table("prompts", prompts.with_columns(pl.lit(run).alias("run_id")), {"language": "es"})
        wh.record_lineage(asset="prompts", table="prompts", partition="es", run_id=run, code_version="v1",
                          result=result, input_versions={}, started_at=datetime.now(UTC))
    lineage = wh.sql("select run_id, path, data_version, row_count from lineage order by finished_at")
    assert lineage["run_id"].to_list() == ["run-1", "run-2"] and lineage["row_count"].to_list() == [1, 1]
    assert lineage["path"][-1] == wh.rel(wh.files("prompts")[0])
    assert lineage["data_version"][-1] == wh.version("prompts")
    tree = trace("p_1", wh)
    assert "prompt p_1 [es, train] 'hola'" in tree and "run run-2" in tree


@pytest.fixture
def filled(any_home):
    wh = Warehouse(any_home)
    wh.write_table("things", _frame(3, "en"), {"language": "en"})
    return wh


@pytest.mark.parametrize(
    "query",
    ["drop view prompts", "insert into t values (1)", "select 1; delete from t", "CREATE TABLE x AS SELECT 1",
     "copy (select 1) to 'x.csv'", "attach 'x.db'", "  /* hi */ update t set a=1", "INSTALL httpfs", "LOAD httpfs",
     "set enable_external_access = true", "export database 'out'", "pragma version"],
)
def test_sql_refuses_writes(filled, query):
    with pytest.raises((WriteRefused, duckdb.Error), match="read-only|disabled|Permission|locked"):
        filled.sql(query)


def test_sql_cannot_write_files_even_through_string_tricks(filled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = filled.table_path("things", {"language": "en"})
    before = _raw(filled, target)
    for query in ["select '--'; COPY (select 42 as x) TO 'out.csv'",
                  f"select '--'; COPY (select 42 as x) TO '{target}' (FORMAT parquet)",
                  "select ';' as a; copy (select 1) to 'out2.csv'"]:
        with pytest.raises(WriteRefused):
            filled.sql(query)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out2.csv").exists()
    assert _raw(filled, target) == before
    assert filled.sql("select count(*) n from things").item() == 3


@pytest.mark.parametrize("fn", ["read_text('/etc/hostname')", "read_csv('/etc/passwd')", "glob('/root/*')",
                                "read_parquet('/tmp/*.parquet')"])
def test_sql_reads_nothing_outside_the_home(filled, fn):
    with pytest.raises(duckdb.Error, match="disabled|Permission"):
        filled.sql(f"select * from {fn}")


@pytest.mark.parametrize("query", ["select 1", "with a as (select 1) select * from a", "describe things", "-- c\nSELECT 2",
                                   "select 'a;b' as s", "select '--' as s", "PIVOT things ON language USING count(*)",
                                   "from things select x", "explain select * from things", "summarize things"])
def test_sql_allows_reads(filled, query):
    assert filled.sql(query) is not None


def _checkpoints(paths: list[str]) -> pl.DataFrame:
    from warehouse.schemas import CHECKPOINTS

    n = len(paths)
    return pl.DataFrame({"checkpoint_id": [f"ck_{i}" for i in range(n)], "path": paths}).with_columns(
        [pl.lit(None, dtype).alias(c) for c, dtype in CHECKPOINTS.items() if c not in ("checkpoint_id", "path")]
    )


def test_a_copied_home_reads_its_own_files_after_the_original_is_gone(home, tmp_path):
    import shutil

    filled = Warehouse(home)
    filled.write_table("things", _frame(3, "en"), {"language": "en"})
    filled.write_table("checkpoints", _checkpoints([str(filled.dir("models", "m"))]))
    filled.connect().close()  # the original's catalog exists, with views over the original's files
    copy = tmp_path / "copy"
    shutil.copytree(filled.home, copy)
    Warehouse(copy).write_table("things", _frame(5, "es"), {"language": "es"})  # the copy diverges
    shutil.rmtree(filled.home)
    wh = Warehouse(copy)
    assert wh.sql("select count(*) from things").item() == 8
    assert wh.sql("select path from checkpoints").item() == "models/m"  # stored relative to the home
    assert wh.read_table("checkpoints")["path"][0] == str(copy / "models" / "m")
    # the catalog file itself now points at the copy, for any DuckDB client
    con = duckdb.connect(str(copy / "warehouse.duckdb"), read_only=True)
    assert con.execute("select count(*) from things").fetchone() == (8,)


def test_a_garbled_catalog_is_rebuilt_from_the_tables(filled):
    filled.connect().close()
    filled.catalog_path.write_bytes(b"\0" * 4096)
    assert filled.sql("select count(*) from things").item() == 3


def test_checkpoint_paths_outside_the_home_and_model_names_are_kept(filled, tmp_path):
    filled.write_table("checkpoints", _checkpoints([str(tmp_path / "elsewhere"), "org/reward-model"]))
    assert filled.read_table("checkpoints")["path"].to_list() == [str(tmp_path / "elsewhere"), "org/reward-model"]


def test_quarantine_codes_given_or_derived(any_home):
    wh = Warehouse(any_home)
    wh.quarantine("a", None, pl.DataFrame({"row_key": ["1"], "reason": ["Too long (3000 chars)"], "payload": ["{}"]}), "r")
    wh.quarantine("b", None, pl.DataFrame({"row_key": ["1"], "code": ["duplicate"], "reason": ["same as p_1"],
                                           "payload": ["{}"]}), "r")
    assert wh.sql("select asset, code from quarantine order by 1").rows() == [("a", "too_long"), ("b", "duplicate")]


HOLD_CATALOG = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)  # a DuckDB shell or notebook left open on the catalog
print("open", flush=True)
time.sleep(120)
"""


def test_a_reader_holding_the_catalog_open_does_not_fail_writes(home):
    """A write whose view cannot be made (another process holds warehouse.duckdb) still succeeds, with
    its data and version in place; the view is made by the next query once the catalog is free."""
    import subprocess
    import sys

    wh = Warehouse(home)
    wh.write_table("things", _frame(3), {"language": "es"})
    reader = subprocess.Popen([sys.executable, "-c", HOLD_CATALOG, str(home / "warehouse.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        written = wh.write_table("others", _frame(2), {"language": "ja"})  # a new table: needs a new view
        assert wh.read_table("others").height == 2 and wh.version("others") == written.data_version
        assert not (home / ".views" / "others").exists() and (home / ".views" / ".deferred" / "others").exists()
    finally:
        reader.kill()
        reader.wait()
    assert wh.sql("select count(*) from others").item() == 2
    assert (home / ".views" / "others").exists() and not (home / ".views" / ".deferred" / "others").exists()


def test_queries_do_not_rewrite_the_catalog_for_a_table_whose_view_failed(home):
    """Only views a write deferred are made by queries: a table whose view could not be built (an
    unreadable file) is left to its next write, not rebuilt, with a write lock, by every query."""
    wh = Warehouse(home)
    wh.write_table("things", _frame(3), {"language": "es"})
    wh.write_table("broken", _frame(2), {"language": "es"})
    (home / "tables/broken/language=es/data.parquet").write_bytes(b"not parquet")
    wh.refresh_catalog()  # the broken table's view fails: no marker for it
    assert not (home / ".views" / "broken").exists()
    before = (home / "warehouse.duckdb").stat().st_mtime_ns
    for _ in range(2):
        assert wh.sql("select count(*) from things").item() == 3
    assert (home / "warehouse.duckdb").stat().st_mtime_ns == before


def test_a_version_record_names_the_file_it_was_written_for(home, monkeypatch):
    """Writer A renames its file in, writer B replaces it and records its version, then A records:
    the partition's version must still be B's (A's record is keyed on A's file as written)."""
    import warehouse.store as store

    wh = Warehouse(home)
    real = store.Warehouse._record_version
    late: list = []
    monkeypatch.setattr(store.Warehouse, "_record_version", lambda self, path, version, st: late.append((path, version, st)))
    first = wh.write_table("things", _frame(3), {"language": "es"})  # A: renamed in, record held back
    monkeypatch.setattr(store.Warehouse, "_record_version", real)
    second = wh.write_table("things", _frame(5), {"language": "es"})  # B: replaces the file, records
    real(wh, *late[0])  # A's record lands last
    assert wh.read_table("things").height == 5
    assert wh.version("things", {"language": "es"}) == second.data_version != first.data_version


def test_a_query_on_a_folder_without_tables_writes_nothing_there(tmp_path):
    """`factory sql` pointed at an existing folder that is not a home (or not yet) makes no catalog,
    lock or marker in it: it says there is no warehouse."""
    folder = tmp_path / "not_a_home"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="no warehouse yet"):
        Warehouse(folder).sql("select 1")
    assert list(folder.iterdir()) == []
