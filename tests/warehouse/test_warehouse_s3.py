"""What only an S3 home has, against the session's real SeaweedFS: manifests as commits, unpublished
data invisible and collected, the local catalog following other writers, the local folder beside
the home, clear errors, and `factory run` / `factory sql` over it. The shared contract (atomic,
interrupted, concurrent writes, quarantine, lineage, read-only SQL) is test_warehouse.py on both
backends."""

import json
import os

import polars as pl
import pytest
from typer.testing import CliRunner

from assets.cli import app
from warehouse import s3 as s3_module
from warehouse.s3 import MANIFEST, ObjectStoreError
from warehouse.store import Warehouse


def _frame(n: int, lang: str = "es") -> pl.DataFrame:
    return pl.DataFrame({"prompt_id": [f"p_{i}" for i in range(n)], "language": [lang] * n, "x": list(range(n))})


def test_a_partition_is_its_manifest_and_unpublished_data_is_invisible(s3_home, monkeypatch):
    wh = Warehouse(s3_home)
    result = wh.write_table("things", _frame(3), {"language": "es"})
    folder = f"{s3_home}/tables/things/language=es"
    manifest = json.loads(wh.fs.cat_file(f"{folder}/{MANIFEST}"))
    assert manifest["rows"] == 3 and manifest["data_version"] == result.data_version
    assert result.path == f"{folder}/{manifest['file']}"
    # a killed writer's upload with no manifest naming it: never read
    wh.fs.pipe_file(f"{folder}/_data/killed-writer.parquet", b"PAR1 half a file")
    assert wh.files("things") == [result.path] and wh.read_table("things").height == 3
    assert wh.sql("select count(*) from things").item() == 3
    # the partition's next write collects what no manifest names, once past the grace period
    monkeypatch.setattr(s3_module, "GRACE_S", 0.0)
    again = wh.write_table("things", _frame(2), {"language": "es"})
    assert wh.fs.find(f"{folder}/_data/") == [again.path.removeprefix("s3://")]


def test_the_local_catalog_follows_other_writers(s3_home):
    reader, writer = Warehouse(s3_home), Warehouse(s3_home)
    writer.write_table("things", _frame(3), {"language": "es"})
    assert reader.sql("select count(*) from things").item() == 3
    writer.write_table("things", _frame(2, "ja"), {"language": "ja"})  # published by another process, say
    writer.write_table("others", _frame(1), {"language": "es"})
    assert reader.sql("select count(*) from things").item() == 5
    assert reader.sql("select count(*) from others").item() == 1


def test_the_local_folder_is_derived_from_the_url_or_given(s3_home, tmp_path, monkeypatch):
    monkeypatch.delenv("FACTORY_LOCAL_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wh = Warehouse(s3_home + "/")
    assert wh.url == s3_home
    server = wh.fs.client_kwargs["endpoint_url"].split("//", 1)[1].replace(":", "_")
    assert wh.home == tmp_path / "cache" / "aya-factory" / "homes" / server / "factory" / s3_home.rsplit("/", 1)[1]
    monkeypatch.setenv("FACTORY_LOCAL_HOME", str(tmp_path / "mine"))
    assert Warehouse(s3_home).home == tmp_path / "mine"


@pytest.mark.parametrize("url", ["s3://", "s3://Bad_Bucket/x", "s3://bucket/a//b", "s3://bucket/a/../b"])
def test_a_malformed_url_is_a_clear_error(url, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_LOCAL_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="s3://bucket/prefix|prefix may not"):
        Warehouse(url)


def test_refused_credentials_are_one_clear_error(s3_home, monkeypatch):
    from warehouse import fs

    monkeypatch.setattr(fs, "_FILESYSTEMS", {})
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ObjectStoreError, match="cannot write s3://.*AWS_SECRET_ACCESS_KEY"):
        Warehouse(s3_home).write_table("things", _frame(1), {"language": "es"})
    with pytest.raises(ObjectStoreError, match="cannot list s3://"):
        Warehouse(s3_home).read_table("things")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert Warehouse(s3_home).read_table("prompts").height == 0  # a declared table with no data yet


def test_factory_run_and_sql_over_s3(s3_home):
    runner = CliRunner()
    run = ["run", "--select", "prompts", "--partition", "es", "--home", s3_home]
    out = runner.invoke(app, run)
    assert out.exit_code == 0, out.output
    counts = ["sql", "select language, count(*) n from prompts group by 1 order by 1", "-f", "csv", "--home", s3_home]
    first = runner.invoke(app, counts)
    assert first.exit_code == 0, first.output
    assert [line.split(",")[0] for line in first.output.splitlines()] == ["language", "es"]
    assert runner.invoke(app, run).exit_code == 0  # a rerun replaces the partition, never doubles it
    assert runner.invoke(app, counts).output == first.output
    wh = Warehouse(s3_home)
    lineage = wh.sql("select partition, count(*) n from lineage where asset = 'prompts' group by 1 order by 1")
    assert lineage.rows() == [("es", 2)]
    assert (wh.home / ".dagster").is_dir() and not wh.fs.exists(f"{s3_home}/.dagster")  # run records stay local
    status = runner.invoke(app, ["status", "--home", s3_home])
    assert status.exit_code == 0 and f"warehouse: {s3_home}" in status.output
