"""merged_model's merge chosen on dev: real tiny merges answer the dev prompts and a real reference
judge compares them with each cluster model on its own languages; the best is kept, nothing else
is looked at, and without candidates the merge is the one it always was."""

from __future__ import annotations

import polars as pl
import pytest

from factory.generation.base import SamplingConfig
from factory.generation.runner import read_shards
from factory.judges import ReferenceJudge
from factory.judges.reference import ReferenceJudgeConfig
from training.merge import MergeSettings, merge_with_settings
from training.merge_choice import candidates_table, choose_merge
from training.online import dev_answers

# Random-weight tiny LMs answer greedily with nothing printable; seeded sampling, one prompt per batch,
# gives each (weights, prompt) one fixed answer, so equal weights give equal answers.
SAMPLING = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=6, seed=0)
OWN = {"a": ("de",), "b": ("ja",)}  # cluster -> its own languages (the shared ones left out)


def _prompts() -> pl.DataFrame:
    rows = [(lang, split, i) for lang in ("de", "ja", "en") for split in ("dev", "eval", "train") for i in range(2)]
    return pl.DataFrame(
        {
            "prompt_id": [f"p_{lang}_{split}{i}" for lang, split, i in rows],
            "language": [lang for lang, _, _ in rows],
            "split": [split for _, split, _ in rows],
            "text": [f"hello world {i} {split} {lang}" for lang, split, i in rows],
            "references": [["-"]] * len(rows),
        }
    )


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def two_models(tiny_lm):
    """Two cluster models: the tiny LM with two random initialisations (one tokenizer, so they merge)."""
    return {"a": tiny_lm(max_length=64, max_positions=128), "b": tiny_lm(seed=1, max_length=64, max_positions=128)}


def test_candidates_are_judged_on_dev_and_the_best_is_kept(two_models, tmp_path):
    models = two_models
    prompts = _prompts()
    # References = cluster a's own greedy answers: a merge equal to model a ties a on de and beats b on ja.
    a_answers, _ = dev_answers(models["a"], prompts, SAMPLING, tmp_path / "ref", "r", batch_size=1)
    assert all(a_answers["text"].str.len_chars() > 0)
    refs = dict(zip(a_answers["prompt_id"], a_answers["text"], strict=True))
    prompts = prompts.with_columns(
        pl.col("prompt_id")
        .replace_strict(refs, default="-")
        .map_elements(lambda t: [t], return_dtype=pl.List(pl.String))
        .alias("references")
    )
    settings = MergeSettings(candidates=[{"weights": {"a": 0.0, "b": 1.0}}, {"weights": {"a": 1.0, "b": 0.0}}])
    judge = ReferenceJudge(ReferenceJudgeConfig(language_check=False))

    choice = choose_merge(
        settings,
        models,
        OWN,
        tmp_path / "merged",
        tmp_path / "work",
        tmp_path / "answers",
        prompts,
        judge,
        SAMPLING,
        "r",
        batch_size=1,
        model_ids={"a": "ck_a", "b": "ck_b"},
    )

    dev_own = set(prompts.filter((pl.col("split") == "dev") & (pl.col("language") != "en"))["prompt_id"])
    assert set(choice.judgments["prompt_id"]) == dev_own  # own-language dev prompts only: no eval, train or en
    assert set(read_shards(tmp_path / "answers")["prompt_id"]) <= dev_own  # nothing else was even answered
    assert set(choice.judgments.filter(pl.col("opponent") == "cluster_a")["language"]) == {"de"}
    first, second = choice.record["candidates"]
    assert second["dev"]["win_rate"] > 0.5 > first["dev"]["win_rate"]
    assert second["dev_by_cluster"]["a"]["ties"] == 2  # identical to model a on a's languages
    assert choice.record["kept"] == 1 and choice.settings.weights == {"a": 1.0, "b": 0.0}
    kept, model_a = _tensors(tmp_path / "merged"), _tensors(models["a"])
    assert all(kept[k].equal(model_a[k]) for k in model_a)  # the kept merge is the one in the output folder
    assert not (tmp_path / "work").exists()  # the other candidates are cleaned up
    assert candidates_table(choice.record)["kept"].to_list() == [False, True]


def test_no_candidates_is_the_single_configured_merge(two_models, tmp_path):
    models = two_models
    settings = MergeSettings(method="linear", weights={"a": 2.0})
    choice = choose_merge(
        settings,
        models,
        OWN,
        tmp_path / "merged",
        tmp_path / "work",
        tmp_path / "answers",
        pl.DataFrame(),
        None,
        SAMPLING,
        "r",
    )
    merge_with_settings(settings, models, tmp_path / "today")
    assert choice.record is None and choice.settings == settings and not (tmp_path / "answers").exists()
    today, got = _tensors(tmp_path / "today"), _tensors(tmp_path / "merged")
    assert all(got[k].equal(today[k]) for k in today)
    assert settings.recorded() == MergeSettings(method="linear", weights={"a": 2.0}).model_dump(exclude={"candidates"})


def test_candidates_are_partial_overrides_and_must_differ():
    settings = MergeSettings(
        density=0.3, candidates=[{"method": "linear"}, {"method": "ties"}, {"method": "dare_ties", "density": 0.7}]
    )
    tried = settings.to_try()
    assert [(s.method, s.density) for s in tried] == [("linear", 0.3), ("ties", 0.3), ("dare_ties", 0.7)]
    assert all(not s.candidates for s in tried)
    with pytest.raises(ValueError, match="same merge"):
        MergeSettings(candidates=[{"method": "linear"}, {"density": 0.9}])  # linear ignores density: the same merge
    with pytest.raises(ValueError, match="densty"):
        MergeSettings(candidates=[{"method": "ties", "densty": 0.5}])
