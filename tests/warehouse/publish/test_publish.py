from __future__ import annotations

import polars as pl
import pytest
import yaml

from tests.warehouse.publish.conftest import SOURCE_INFO
from warehouse.publish import PublishError, pair_configs, publish_dataset, push_to_hub


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
    assert [c["config_name"] for c in meta["configs"]] == ["all", "en", "fr", "zh-Hans"]
    # `all` reads every config's shards (no copy) and is the only default.
    assert meta["configs"][0]["data_files"] == [
        {
            "split": "train",
            "path": ["data/en/train-*.parquet", "data/fr/train-*.parquet", "data/zh-Hans/train-*.parquet"],
        }
    ]
    assert [c.get("default", False) for c in meta["configs"]] == [True, False, False, False]
    assert meta["configs"][1]["data_files"] == [{"split": "train", "path": "data/en/train-*.parquet"}]
    assert meta["language"] == ["en", "fr", "zh"]
    assert meta["license"] == "bsd-3-clause" and meta["size_categories"] == ["n<1K"]
    assert meta["pretty_name"] == "tiny-pairs" and meta["task_categories"] == ["text-generation"]
    body = (folder / "README.md").read_text(encoding="utf-8")
    assert "| all | 10 | en, fr, zh-Hans | best_worst | 0 |" in body
    assert "Online DPO pairs" not in body
    assert (
        "| zh-Hans | 2 | zh-Hans | best_worst | 0 |" in body
        and "| reward_model | ck_rm |" in body
        and "load_dataset" in body
    )
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temp dirs left behind


def test_load_dataset_without_name_loads_every_row(pairs, tmp_path):
    from datasets import load_dataset

    folder = publish(pairs, tmp_path / "ds", max_rows_per_shard=3)
    ds = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert ds.num_rows == pairs.height
    assert sorted(ds["pair_id"]) == sorted(pairs["pair_id"].to_list())
    assert set(ds["language"]) == {"en", "fr", "zh-Hans"}


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
    configs = front_matter(folder)["configs"]
    assert [c["config_name"] for c in configs] == ["default"] and configs[0]["default"] is True
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["default"]


def test_online_pairs_get_their_own_configs(pairs, online_pairs, tmp_path):
    from datasets import load_dataset

    both = pl.concat([pairs, online_pairs], how="diagonal_relaxed")
    folder = publish(both, tmp_path / "ds", config_column=pair_configs("language"))
    meta = front_matter(folder)
    names = [c["config_name"] for c in meta["configs"]]
    assert names == ["all", "en", "fr", "zh-Hans", "online_round_1", "online_round_2"]
    assert meta["language"] == ["en", "fr", "zh"]  # config names are not languages
    body = (folder / "README.md").read_text(encoding="utf-8")
    assert "| online_round_1 | 3 | en | online | 1 |" in body
    assert "are in their own configs `online_round_<k>`" in body
    assert "| all | 15 | en, fr, zh-Hans | best_worst, online | 0, 1, 2 |" in body

    def load(name=None):
        return load_dataset(str(folder), name=name, split="train", cache_dir=str(tmp_path / "hf_cache"))

    everything = load()
    assert everything.num_rows == both.height
    assert sorted(everything["pair_id"]) == sorted(both["pair_id"].to_list())
    round_1 = load("online_round_1")
    assert round_1.num_rows == 3 and set(round_1["method"]) == {"online"} and set(round_1["round"]) == {1}
    assert round_1["policy_heldout_reward"] == pytest.approx([0.1] * 3)
    en = load("en")
    assert set(en["method"]) == {"best_worst"} and en.num_rows == 4  # language configs stay offline
    assert load("online_round_2").num_rows == 2


def test_pair_configs_without_a_config_column(pairs, online_pairs):
    both = pl.concat([pairs, online_pairs], how="diagonal_relaxed")
    counts = dict(both.group_by(pair_configs(None).alias("config")).len().rows())
    assert counts == {"offline": pairs.height, "online_round_1": 3, "online_round_2": 2}


def test_all_is_reserved(pairs, tmp_path):
    with pytest.raises(ValueError, match="every row"):
        publish(pairs.with_columns(language=pl.lit("all")), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_push_to_hub_without_token_is_a_clear_error(pairs, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    folder = publish(pairs, tmp_path / "ds")
    with pytest.raises(PublishError, match="HF_TOKEN"):
        push_to_hub(folder, "someone/tiny-pairs")


def test_push_to_hub_failures_are_one_line(pairs, tmp_path, monkeypatch):
    """A bad repo id, a missing folder or the hub out of reach: a PublishError in one line, never the
    hub library's exception (no network here: offline mode stands in for an unreachable hub)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = publish(pairs, tmp_path / "ds")
    for where, repo, expected in ((folder, "not a repo id", "is not a hub repo id"),
                                  (tmp_path, "someone/tiny-pairs", "run `factory publish`|publish it first"),
                                  (folder, "someone/tiny-pairs", "offline mode")):
        with pytest.raises(PublishError, match=expected) as info:
            push_to_hub(where, repo, token="hf_not_a_real_token")
        assert len(str(info.value).splitlines()) == 1


def test_unsafe_config_names_and_pipes_in_provenance(pairs, tmp_path):
    with pytest.raises(ValueError, match="folder names"):
        publish(pairs.with_columns(language=pl.lit("../evil")), tmp_path / "a")
    folder = publish(pairs, tmp_path / "b", source_info={"strategy": "a|b"})
    assert "| strategy | a\\|b |" in (folder / "README.md").read_text(encoding="utf-8")


def test_another_folder_of_the_same_layout_is_not_served_from_the_cache(pairs, tmp_path):
    """`datasets` caches a local folder by its card's configs (not its path or files): two homes'
    folders of the same layout once shared a cache entry, and the second load returned the first's
    rows. Each config's description carries a digest of its files, so different data is a new entry."""
    from datasets import load_dataset

    cache = str(tmp_path / "hf_cache")
    first = publish(pairs, tmp_path / "home_a" / "preference_pairs")
    fewer = pairs.filter(pl.col("language") != "en").vstack(pairs.filter(pl.col("language") == "en").head(1))
    second = publish(fewer, tmp_path / "home_b" / "preference_pairs")
    a = load_dataset(str(first), name="en", split="train", cache_dir=cache)
    b = load_dataset(str(second), name="en", split="train", cache_dir=cache)
    assert a.num_rows == pairs.filter(pl.col("language") == "en").height and b.num_rows == 1
    assert load_dataset(str(second), split="train", cache_dir=cache).num_rows == fewer.height
    described = {c["config_name"]: c["description"] for c in front_matter(second)["configs"]}
    assert described["en"].startswith("1 rows; data sha256 ") and described["all"].startswith(f"{fewer.height} rows;")
    # the same data published again gives the same card (the digest is of content, not of time)
    again = publish(fewer, tmp_path / "home_c" / "preference_pairs")
    assert (again / "README.md").read_text() == (second / "README.md").read_text()


def test_a_published_folder_has_the_permissions_of_any_new_folder(pairs, tmp_path):
    """Not mkdtemp's 0700: the umask decides, as for every other folder in the home."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    folder = publish(pairs, tmp_path / "ds")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folder left beside it
