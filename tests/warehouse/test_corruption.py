"""A damaged warehouse says what is wrong and what to do: unreadable table files are named with the
asset to rerun, an unreadable lineage file is set aside, homes with glob characters work, and a
full, read-only or blocked home is one WarehouseWriteError."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from datetime import UTC, datetime

import duckdb
import polars as pl
import pytest

from warehouse import schemas
from warehouse.lineage import trace
from warehouse.status import status_frame, table_status
from warehouse.store import CorruptTable, Warehouse, WarehouseWriteError


def _frame(n: int, lang: str = "es") -> pl.DataFrame:
    return pl.DataFrame({"prompt_id": [f"p_{i}" for i in range(n)], "language": [lang] * n, "x": list(range(n))})


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble_footer(path) -> None:
    """Overwrite the start of the Thrift footer: the reader fails inside Thrift, which names no file."""
    data = bytearray(path.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer_len
    data[start + 4 : start + 40] = bytes(range(200, 236))
    path.write_bytes(bytes(data))


def _record(wh: Warehouse, asset: str, table: str, partition: str | None, result) -> None:
    wh.record_lineage(asset=asset, table=table, partition=partition, run_id=f"run-{asset}-{partition}",
                      code_version="v1", result=result, input_versions={}, started_at=datetime.now(UTC))


@pytest.fixture
def wh(home) -> Warehouse:
    wh = Warehouse(home)
    for lang in ("es", "ja"):
        _record(wh, "things", "things", lang, wh.write_table("things", _frame(3, lang), {"language": lang}))
    _record(wh, "items", "items", "es", wh.write_table("items", _frame(2), {"language": "es"}))
    return wh


# -- A: unreadable table files are named --------------------------------------------------------------

@pytest.mark.parametrize("damage", [_truncate, _garble_footer])
def test_read_table_names_the_file_the_table_and_the_asset_to_rerun(wh, damage):
    damage(wh.table_path("things", {"language": "es"}))
    with pytest.raises(CorruptTable) as info:
        wh.read_table("things")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("tables/things/language=es/data.parquet of table things cannot be read (")
    assert msg.endswith(f"rerun `factory run --select things --partition es --home {wh.url}`")
    assert wh.read_table("things", {"language": "ja"}).height == 3  # the other partition still reads


def test_the_asset_to_rerun_is_the_producer_or_the_writer_named_in_lineage(wh):
    gens = schemas.empty(schemas.TABLES["generations"])
    wh.write_table("generations", gens, {"producer": "online_pairs_round_1"})
    wh.write_table("generations", gens, {"producer": "native_vs_translated", "language": "es"})
    wh.quarantine("prompts", "ja", pl.DataFrame({"row_key": ["a"], "reason": ["empty"], "payload": ["{}"]}), "r")
    ck = wh.write_table("checkpoints_like", _frame(1), {"language": "es"})
    _record(wh, "teacher_models", "checkpoints_like", "es", ck)  # lineage says who wrote a file
    cases = {
        ("generations", ("producer=online_pairs_round_1",)): "--select online_pairs_round_1`",
        ("generations", ("producer=native_vs_translated", "language=es")): "--select preference_pairs --partition es`",
        ("quarantine", ("asset=prompts", "partition=ja")): "--select prompts --partition ja`",
        ("checkpoints_like", ("language=es",)): "--select teacher_models --partition es`",
    }
    for (table, parts), hint in cases.items():
        path = wh.tables_dir.joinpath(table, *parts, "data.parquet")
        good = path.read_bytes()
        _truncate(path)
        with pytest.raises(CorruptTable, match=re.escape(f"rerun `factory run {hint.replace('`', '')} --home {wh.url}`") + "$"):
            wh.read_table(table)
        path.write_bytes(good)


def test_status_shows_every_table_and_names_the_corrupt_one(wh):
    _truncate(wh.table_path("things", {"language": "ja"}))
    df = status_frame(wh)
    assert dict(zip(df["table"], df["rows"], strict=True))["items"] == 2
    row = df.filter(pl.col("table") == "things").row(0, named=True)
    assert row["rows"] is None and "tables/things/language=ja/data.parquet" in row["problem"]
    text = table_status(wh)
    assert f"rerun `factory run --select things --partition ja --home {wh.url}`" in text


def test_sql_over_a_corrupt_table_names_it_and_other_tables_still_work(wh):
    wh.connect().close()
    _garble_footer(wh.table_path("things", {"language": "es"}))
    with pytest.raises(CorruptTable, match="tables/things/language=es/data.parquet of table things"):
        wh.sql("select count(*) from things")
    wh.refresh_catalog()  # a full rebuild is not stopped by the corrupt table
    assert wh.sql("select count(*) from items").item() == 2
    with pytest.raises(CorruptTable, match="--select things --partition es"):
        wh.sql("select * from things")
    wh.write_table("things", _frame(4), {"language": "es"})  # the rerun replaces the file and the view
    assert wh.sql("select count(*) from things").item() == 7


# -- A: an unreadable lineage file is set aside ----------------------------------------------------------

def test_a_truncated_lineage_file_is_set_aside_and_reported(wh, caplog):
    wh.connect().close()  # the lineage view exists before the damage
    files = wh.files("lineage")
    bad = files[0]
    _truncate(bad)
    with caplog.at_level(logging.WARNING, logger="warehouse.store"):
        assert wh.sql("select count(*) from lineage").item() == len(files) - 1
    assert str(bad.relative_to(wh.home)) in caplog.text
    moved = wh.tables_dir / ".corrupt" / "lineage" / bad.name
    assert moved.exists() and not bad.exists()
    assert ".corrupt" not in wh.tables()


def test_status_lineage_and_catalog_rebuild_survive_a_truncated_lineage_file(wh, caplog):
    _truncate(wh.files("lineage")[-1])
    with caplog.at_level(logging.WARNING, logger="warehouse.store"):
        text = table_status(wh)
    assert "things" in text and "lineage" in text and "set aside" in text
    assert "set aside" in caplog.text
    again = table_status(Warehouse(wh.home))  # a later status still says what was set aside
    assert "tables/.corrupt/lineage/" in again and "set aside" in again
    assert wh.refresh_catalog() and wh.sql("select count(*) from things").item() == 6
    assert wh.read_table("lineage").height == len(wh.files("lineage"))


def test_a_catalog_rebuild_sets_aside_an_unreadable_lineage_file(wh):
    _garble_footer(wh.files("lineage")[0])
    wh.catalog_path.unlink()
    assert wh.sql("select count(*) from lineage").item() == 2
    assert wh.sql("select count(*) from things").item() == 6
    # any DuckDB client can read the rebuilt catalog's lineage view
    con = duckdb.connect(str(wh.catalog_path), read_only=True)
    assert con.execute("select count(*) from lineage").fetchone() == (2,)


def test_lineage_trace_survives_a_truncated_lineage_file(home):
    wh = Warehouse(home)
    prompts = pl.DataFrame({"prompt_id": ["p_1"], "language": ["es"], "text": ["Hola"], "split": ["train"],
                            "source": ["t"], "origin": ["native"], "references": [["Hola"]], "run_id": ["run-prompts-es"]})
    _record(wh, "prompts", "prompts", "es", wh.write_table("prompts", prompts, {"language": "es"}))
    _record(wh, "other", "other", None, wh.write_table("other", _frame(1)))
    bad = wh.files("lineage")[-1]
    _truncate(bad)
    tree = trace("p_1", wh)
    assert "run run-prom" in tree and "prompts[es]" in tree
    assert tree.splitlines()[-1].startswith(f"warning: unreadable {bad.relative_to(home).as_posix()} set aside")


# -- C: glob characters in the home --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["run [1]", "a*b?c", "x[!y]"])
def test_a_home_with_glob_characters_writes_reads_and_queries(tmp_path, name):
    wh = Warehouse(tmp_path / name)
    (tmp_path / "run 1").mkdir()  # what `[1]` would match as a pattern
    for lang in ("es", "ja"):
        _record(wh, "things", "things", lang, wh.write_table("things", _frame(2, lang), {"language": lang}))
    assert wh.read_table("things").height == 4
    assert wh.read_table("things", {"language": "ja"}).height == 2
    assert wh.sql("select count(*) from things").item() == 4
    assert wh.sql("select count(*) from lineage").item() == 2
    wh.write_table("things", _frame(3, "de"), {"language": "de"})  # a new partition appears in the view at once
    assert wh.sql("select count(*) from things").item() == 7
    wh.refresh_catalog()
    con = duckdb.connect(str(wh.catalog_path), read_only=True)
    assert con.execute("select count(*) from things").fetchone() == (7,)


# -- D: a full, read-only or blocked home is one clear error -----------------------------------------------

def test_a_full_disk_is_one_warehouse_write_error_and_the_table_is_intact(wh, monkeypatch):
    """ENOSPC for real: polars writes to /dev/full, which always answers 'No space left on device'."""
    write = pl.DataFrame.write_parquet
    monkeypatch.setattr(pl.DataFrame, "write_parquet", lambda self, path, **kw: write(self, "/dev/full", **kw))
    with pytest.raises(WarehouseWriteError) as info:
        wh.write_table("things", _frame(50), {"language": "es"})
    msg = str(info.value)
    assert "\n" not in msg and str(wh.home) in msg and "tables/things/language=es/data.parquet" in msg
    assert "disk is full" in msg and "FACTORY_HOME" in msg
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert wh.read_table("things", {"language": "es"}).height == 3
    assert [p.name for p in wh.table_path("things", {"language": "es"}).parent.iterdir()] == ["data.parquet"]


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
                                        (errno.ENOSPC, "disk is full")])
def test_rename_errors_become_warehouse_write_errors(wh, monkeypatch, code, words):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(WarehouseWriteError, match=words):
        wh.write_table("things", _frame(1), {"language": "es"})


def test_a_home_under_a_file_is_a_warehouse_write_error(tmp_path):
    """Tests run as root, where a chmod'ed folder does not stop writes: a file in the way (ENOTDIR) does."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WarehouseWriteError, match=r"cannot create .*afile/home.*not a folder"):
        Warehouse(tmp_path / "afile" / "home")
    wh = Warehouse(tmp_path / "ok")
    (wh.home / "models").write_text("x")
    with pytest.raises(WarehouseWriteError, match="models"):
        wh.dir("models", "m")
    (wh.tables_dir).mkdir()
    (wh.tables_dir / "things").write_text("x")
    with pytest.raises(WarehouseWriteError, match="tables/things"):
        wh.write_table("things", _frame(1), {"language": "es"})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_a_read_only_home_is_a_warehouse_write_error(tmp_path):
    wh = Warehouse(tmp_path / "ro")
    wh.write_table("things", _frame(1), {"language": "es"})
    for p in [wh.home, *wh.home.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    try:
        with pytest.raises(WarehouseWriteError, match="permission denied"):
            wh.write_table("things", _frame(2), {"language": "ja"})
    finally:
        for p in [wh.home, *wh.home.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
    shutil.rmtree(wh.home)
