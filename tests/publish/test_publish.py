from __future__ import annotations

import polars as pl
import pytest
import yaml

from tests.publish.conftest import SOURCE_INFO
from warehouse.publish import PublishError, publish_dataset, push_to_hub


def publish(pairs: pl.DataFrame, out, **kw):
    args = dict(name="tiny-pairs", description="Test pairs.", licenses=["bsd-3-clause"], source_info=SOURCE_INFO)
    return publish_dataset(pairs, out, **{**args, **kw})


def front_matter(folder) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_layout_card_and_sharding(pairs, tmp_path):
    folder = publish(pairs, tmp_path / "ds", max_rows_per_shard=3)
    files = sorted(p.relative_to(folder).as_posix() for p in (folder / "data").rglob("*.parquet"))
    # en/fr have 4 rows each -> 2 shards of <= 3; zh-Hans has 2 rows -> 1 shard.
    assert files == [
        "data/en/train-00000-of-00002.parquet",
        "data/en/train-00001-of-00002.parquet",
        "data/fr/train-00000-of-00002.parquet",
        "data/fr/train-00001-of-00002.parquet",
        "data/zh-Hans/train-00000-of-00001.parquet",
    ]
    meta = front_matter(folder)
    assert [c["config_name"] for c in meta["configs"]] == ["en", "fr", "zh-Hans"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/en/train-*.parquet"}]
    assert meta["language"] == ["en", "fr", "zh"]
    assert meta["license"] == "bsd-3-clause" and meta["size_categories"] == ["n<1K"]
    assert meta["pretty_name"] == "tiny-pairs" and meta["task_categories"] == ["text-generation"]
    body = (folder / "README.md").read_text(encoding="utf-8")
    assert "| zh-Hans | 2 |" in body and "| reward_model | ck_rm |" in body and "load_dataset" in body
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temp dirs left behind


def test_load_dataset_per_config(pairs, tmp_path):
    from datasets import load_dataset

    folder = publish(pairs, tmp_path / "ds", max_rows_per_shard=3)
    for lang, expected in pairs.group_by("language").len().rows():
        ds = load_dataset(str(folder), name=lang, split="train", cache_dir=str(tmp_path / "hf_cache"))
        assert ds.num_rows == expected
        assert ds.column_names == pairs.columns
        assert set(ds["language"]) == {lang}
        first = ds[0]
        assert first["chosen"][0]["role"] == "assistant" and first["prompt"][0]["role"] == "user"
        assert isinstance(first["chosen"][0]["content"], str)


def test_republish_replaces_atomically(pairs, tmp_path):
    folder = publish(pairs, tmp_path / "ds")
    publish(pairs.filter(pl.col("language") == "en"), tmp_path / "ds")
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["en"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_rejects_bad_input(pairs, tmp_path):
    with pytest.raises(ValueError, match="null"):
        publish(pairs.with_columns(language=pl.lit(None, dtype=pl.String)), tmp_path / "a")
    with pytest.raises(ValueError, match="empty"):
        publish(pairs.clear(), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_single_default_config(pairs, tmp_path):
    folder = publish(pairs, tmp_path / "ds", config_column=None)
    assert [c["config_name"] for c in front_matter(folder)["configs"]] == ["default"]


def test_push_to_hub_without_token_is_a_clear_error(pairs, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    folder = publish(pairs, tmp_path / "ds")
    with pytest.raises(PublishError, match="HF_TOKEN"):
        push_to_hub(folder, "someone/tiny-pairs")


def test_unsafe_config_names_and_pipes_in_provenance(pairs, tmp_path):
    with pytest.raises(ValueError, match="folder names"):
        publish(pairs.with_columns(language=pl.lit("../evil")), tmp_path / "a")
    folder = publish(pairs, tmp_path / "b", source_info={"strategy": "a|b"})
    assert "| strategy | a\\|b |" in (folder / "README.md").read_text(encoding="utf-8")
