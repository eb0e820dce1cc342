"""The run config: errors name the key and say how to fix it, before any work starts; paths resolve
against the config file's folder; `factory config` shows the teachers that will be used."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from assets.cli import app
from assets.config import ConfigError, load_config
from factory.languages import CLUSTERS, describe_clusters, own_languages

OK_LANGUAGES = ["en", "es", "de", "ja"]  # two clusters the chatterbot corpus covers


def _write(folder: Path, data: dict, name: str = "run.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _error(folder: Path, data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(folder, data))
    return str(info.value)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# -- shipped profiles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "teachers"),
    [
        ("default", ["middle_eastern", "east_asian", "east_european", "west_european"]),
        ("tiny", ["east_asian", "east_european", "west_european"]),
    ],
)
def test_shipped_profiles_validate(profile, teachers):
    cfg = load_config(profile)
    assert [t.name for t in cfg.resolved_teachers()] == teachers
    assert all(t.model == f"embedded:{t.name}" for t in cfg.resolved_teachers())


# -- 1: one cluster, one teacher -------------------------------------------------------------------


def test_languages_of_one_cluster_explain_the_clusters(tmp_path):
    err = _error(tmp_path, {"languages": ["en", "es", "ja"]})
    assert "languages: arbitrage needs at least 2 teachers" in err
    assert "give 1 (east_asian)" in err
    assert "en, es, fr are shared by every cluster" in err
    for cluster in CLUSTERS:  # every cluster, with its own languages
        assert f"{cluster}: {', '.join(own_languages(cluster))} (+ en, es, fr)" in err
    assert "add a language of another cluster" in err and "configure `teachers:`" in err


def test_shared_languages_alone_give_no_teacher(tmp_path):
    err = _error(tmp_path, {"languages": ["en", "es", "fr"]})
    assert "languages: arbitrage needs at least 2 teachers" in err and "give none" in err


def test_one_configured_teacher_is_named_under_teachers(tmp_path):
    err = _error(tmp_path, {"languages": OK_LANGUAGES, "teachers": [{"name": "solo", "model": "embedded:east_asian"}]})
    assert "teachers: arbitrage needs at least 2 teachers; got 1 (solo)" in err


def test_describe_clusters_has_one_line_per_cluster():
    lines = describe_clusters(indent="").splitlines()
    assert [line.split(":")[0] for line in lines] == list(CLUSTERS)
    assert "west_european: nl, de, it, pt, ro (+ en, es, fr)" in lines


# -- 2: `factory config` prints the teachers that will be used -------------------------------------


def test_factory_config_prints_the_resolved_teachers(tmp_path):
    out = CliRunner().invoke(app, ["config", "--config", "tiny"])
    assert out.exit_code == 0, out.output
    shown = yaml.safe_load(out.output)
    assert [t["name"] for t in shown["teachers"]] == ["east_asian", "east_european", "west_european"]
    assert [t["model"] for t in shown["teachers"]] == [
        "embedded:east_asian",
        "embedded:east_european",
        "embedded:west_european",
    ]
    # what it prints is a config that loads to the same run
    again = load_config(_write(tmp_path, shown, "printed.yaml"))
    assert again.resolved_teachers() == load_config("tiny").resolved_teachers()


def test_factory_config_prints_configured_teachers(tmp_path):
    teachers = [
        {"name": "big", "backend": "openai", "model": "served-a"},
        {"name": "small", "model": "embedded:east_asian"},
    ]
    path = _write(tmp_path, {"languages": OK_LANGUAGES, "teachers": teachers})
    out = CliRunner().invoke(app, ["config", "--config", str(path)])
    assert out.exit_code == 0, out.output
    shown = yaml.safe_load(out.output)["teachers"]
    assert [(t["name"], t["backend"], t["model"]) for t in shown] == [
        ("big", "openai", "served-a"), ("small", "transformers", "embedded:east_asian"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        {"languages": ["en", "es", "ja", "ru"]},  # no west_european teacher, though en/es map to it by default
        {"languages": OK_LANGUAGES, "teachers": [{"name": "big", "backend": "openai", "model": "served-a"},
                                                 {"name": "small", "model": "embedded:east_asian"}]},
    ],
)  # fmt: skip
def test_what_factory_config_prints_loads_again(tmp_path, data):
    out = CliRunner().invoke(app, ["config", "--config", str(_write(tmp_path, data))])
    assert out.exit_code == 0, out.output
    again = load_config(_write(tmp_path, yaml.safe_load(out.output), "printed.yaml"))
    assert again == load_config(tmp_path / "run.yaml").model_copy(update={"teachers": again.teachers})
    assert again.teachers == load_config(tmp_path / "run.yaml").resolved_teachers()


# -- 3: relative paths resolve against the config file; missing files are refused ------------------


def test_relative_source_path_resolves_against_the_config_folder(tmp_path, monkeypatch):
    data = _jsonl(tmp_path / "project" / "data" / "p.jsonl", [{"prompt": "hola", "language": "es"}])
    path = _write(tmp_path / "project", {
        "languages": OK_LANGUAGES,
        "prompts": {"sources": [{"kind": "chatterbot"}, {"kind": "jsonl", "path": "data/p.jsonl"}]},
    })  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    assert cfg.prompts.sources[1].path == str(data)


def test_missing_source_file_is_refused_with_its_key_and_absolute_path(tmp_path):
    err = _error(tmp_path, {
        "languages": OK_LANGUAGES,
        "prompts": {"sources": [{"kind": "chatterbot"}, {"kind": "csv", "path": "../missing.csv"}]},
    })  # fmt: skip
    missing = tmp_path.parent / "missing.csv"
    assert f"prompts.sources.1.path: no such file {missing} " in err
    assert "(relative paths are resolved against the config file's folder)" in err


def test_model_paths_local_or_named(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "rm").mkdir(parents=True)
    (root / "teacher_b").mkdir()
    (root / "judge_rm").mkdir()
    home = tmp_path / "home"
    (home / "base_lm").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    cfg = load_config(_write(root, {
        "languages": OK_LANGUAGES,
        "teachers": [
            {"name": "a", "model": "./teacher_b"},  # local: starts with .
            {"name": "b", "model": "org/some-model"},  # a hub name: left as given
            {"name": "c", "backend": "openai", "model": "./served-name"},  # openai: a served name, never a path
            {"name": "d", "backend": "vllm", "model": "teacher_b"},  # exists next to the config: local
        ],
        "arbiter": {"model": "rm"},
        "training": {"base_model": "~/base_lm"},
        "evaluation": {"judge": {"name": "reward"}, "reward_model": "./judge_rm"},
        "prompts": {"sources": [{"kind": "chatterbot"}, {"kind": "hf", "path": "org/dataset", "references_column": "r"}]},
    }))  # fmt: skip
    assert [t.model for t in cfg.teachers] == [
        str(root / "teacher_b"),
        "org/some-model",
        "./served-name",
        str(root / "teacher_b"),
    ]
    assert cfg.arbiter.model == str(root / "rm")
    assert cfg.training.base_model == str(home / "base_lm")
    assert cfg.evaluation.reward_model == str(root / "judge_rm")
    assert cfg.prompts.sources[1].path == "org/dataset"


def test_missing_model_folders_are_refused_each_under_its_key(tmp_path):
    err = _error(tmp_path, {
        "languages": OK_LANGUAGES,
        "teachers": [{"name": "a", "model": "embedded:east_asian"}, {"name": "b", "model": "./models/b"}],
        "arbiter": {"model": "./models/rm"},
        "training": {"base_model": "/definitely/not/here"},
        "prompts": {"sources": [{"kind": "chatterbot"}, {"kind": "hf", "path": "./saved_ds"}]},
    })  # fmt: skip
    assert f"teachers.1.model: no such file {tmp_path / 'models' / 'b'}" in err
    assert f"arbiter.model: no such file {tmp_path / 'models' / 'rm'}" in err
    assert "training.base_model: no such file /definitely/not/here" in err
    assert f"prompts.sources.1.path: no such file {tmp_path / 'saved_ds'}" in err


def test_cli_refuses_a_missing_file_in_a_few_lines(tmp_path):
    path = _write(
        tmp_path, {"languages": OK_LANGUAGES, "prompts": {"sources": [{"kind": "jsonl", "path": "nope.jsonl"}]}}
    )
    out = CliRunner().invoke(app, ["config", "--config", str(path)])
    assert out.exit_code == 2
    assert "prompts.sources.0.path: no such file" in out.output
    assert "Traceback" not in out.output and len(out.output.splitlines()) < 20


# -- 4: the embedded teachers need reference replies in their cluster's languages -------------------


def test_a_cluster_without_replies_is_refused_up_front(tmp_path):
    err = _error(tmp_path, {"languages": ["en", "es", "ja", "ro"]})  # chatterbot has no Romanian
    assert "languages: ro brings in the embedded teacher 'embedded:west_european'" in err
    assert "reference replies" in err and "`references_column`" in err
    assert "use a language of the cluster that the corpus covers (nl, de, it, pt)" in err


def test_a_source_without_references_column_gives_no_replies(tmp_path):
    rows = [{"prompt": "Bună ziua, ce mai faci?", "language": "ro", "reply": "Bine, mulțumesc."}]
    _jsonl(tmp_path / "ro.jsonl", rows)
    source = {"kind": "jsonl", "path": "ro.jsonl"}
    data = {"languages": ["en", "ja", "ro"], "prompts": {"sources": [{"kind": "chatterbot"}, source]}}
    assert "ro brings in the embedded teacher 'embedded:west_european'" in _error(tmp_path, data)
    source["references_column"] = "reply"
    cfg = load_config(_write(tmp_path, data))
    assert [t.name for t in cfg.resolved_teachers()] == ["east_asian", "west_european"]


def test_no_replies_at_all_refuses_the_embedded_arbiter_and_the_reference_judge(tmp_path):
    _jsonl(tmp_path / "p.jsonl", [{"prompt": "hola", "language": "es"}])
    err = _error(tmp_path, {
        "languages": OK_LANGUAGES,
        "teachers": [{"name": "a", "backend": "openai", "model": "m1"}, {"name": "b", "backend": "openai", "model": "m2"}],
        "prompts": {"sources": [{"kind": "jsonl", "path": "p.jsonl"}]},
    })  # fmt: skip
    assert "arbiter.model: the embedded Arbiter is trained on pairs made from replies" in err
    assert "evaluation.judge.name: the reference judge compares answers with replies" in err


def test_an_embedded_teacher_outside_the_run_languages_is_refused(tmp_path):
    err = _error(tmp_path, {
        "languages": ["en", "ja", "ko"],
        "teachers": [{"name": "a", "model": "embedded:east_asian"}, {"name": "b", "model": "embedded:middle_eastern"}],
    })  # fmt: skip
    assert "teachers.1.model: the embedded teacher 'embedded:middle_eastern' is trained on its cluster's own" in err


# -- 5: names and numbers that only failed later -----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"teachers": [{"name": "a", "model": "embedded:martian"}, {"name": "b", "model": "embedded:east_asian"}]},
         "teachers.0.model: unknown embedded teacher 'embedded:martian'"),
        ({"training": {"dpo_methods": ["magic"]}}, "training.dpo_methods: Value error, unknown pair method(s) 'magic'"),
        ({"training": {"dpo_methods": []}}, "training.dpo_methods: Value error, at least one pair method"),
        ({"merge": {"weights": {"martian": 1.0}}}, "merge.weights.martian: unknown cluster; this run merges east_asian, west_european"),
        ({"merge": {"weights": {"east_european": 1.0}}}, "merge.weights.east_european: no cluster model in this run"),
        ({"merge": {"candidates": [{"method": "linear"}, {"weights": {"martian": 2.0}}]}},
         "merge.candidates.1.weights.martian: unknown cluster"),
        ({"languages": [*OK_LANGUAGES, "ru"], "merge": {"candidates": [{"method": "linear"}, {"method": "slerp"}]}},
         "merge.candidates.1.method: 'slerp' merges exactly 2 models; this run merges 3"),
        ({"pairs": {"native_vs_translated": {"weak_teacher": "nobody"}}},
         "pairs.native_vs_translated.weak_teacher: 'nobody' is not a teacher; teachers: east_asian, west_european"),
        ({"arbitrage": {"routing": {"single_teacher": "nobody"}}}, "arbitrage.routing.single_teacher: 'nobody' is not a teacher"),
        ({"arbitrage": {"routing": {"fixed_teachers": {"ja": "nobody"}}}}, "arbitrage.routing.fixed_teachers.ja: 'nobody' is not"),
        ({"training": {"sft": {"lr": -1}}}, "training.sft.lr: must be positive, got -1.0"),
        ({"training": {"online": {"dpo": {"lr": 0}}}}, "training.online.dpo.lr: must be positive"),
        ({"training": {"online": {"betas": [0.1, -0.1, 0.1]}}}, "training.online.betas: must be positive"),
        ({"models": {"embedded": {"teacher_steps": 0}}}, "models.embedded.teacher_steps: must be positive, got 0"),
        ({"arbiter": {"train": {"lr": -0.001}}}, "arbiter.train.lr: must be positive"),
        ({"arbitrage": {"router": {"learning_rate": -2}}}, "arbitrage.router.learning_rate: must be positive"),
        ({"training": {"dpo": {"batch_size": 0}}}, "training.dpo.batch_size: must be positive"),
        ({"evaluation": {"judge": {"name": "magic"}}}, "evaluation.judge.name: unknown judge 'magic'; known: reference, reward, llm"),
        ({"evaluation": {"judge": {"name": "llm"}, "judge_model": {"name": "j", "model": "embedded:base"}}},
         "evaluation.judge_model.model: a judge cannot be an embedded model"),
        ({"training": {"base_model": "embedded:west_european"}}, "training.base_model: the embedded base model is embedded:base"),
        ({"pairs": {"native_vs_translated": {"enabled": False}}, "training": {"dpo_methods": ["native_vs_translated"]}},
         "training.dpo_methods: only native_vs_translated"),
    ],
)  # fmt: skip
def test_refused_up_front_with_the_key(tmp_path, overrides, expected):
    assert expected in _error(tmp_path, {"languages": OK_LANGUAGES, **overrides})


def test_every_problem_is_reported_at_once(tmp_path):
    err = _error(tmp_path, {
        "languages": OK_LANGUAGES,
        "merge": {"weights": {"martian": 1.0}},
        "training": {"sft": {"lr": -1}},
        "pairs": {"native_vs_translated": {"weak_teacher": "nobody"}},
    })  # fmt: skip
    assert all(
        k in err for k in ("merge.weights.martian", "training.sft.lr", "pairs.native_vs_translated.weak_teacher")
    )


def test_known_names_and_sentinels_are_accepted(tmp_path):
    cfg = load_config(_write(tmp_path, {
        "languages": OK_LANGUAGES,
        "teachers": [{"name": "ea", "model": "embedded:east_asian"}, {"name": "we", "model": "embedded:west_european"},
                     {"name": "generalist", "model": "embedded:base"}],
        "merge": {"weights": {"east_asian": 2.0, "west_european": 1.0}},
        "pairs": {"native_vs_translated": {"weak_teacher": "generalist"}},
        "arbitrage": {"routing": {"fixed_teachers": {"ja": "ea", "de": "we"}}},
        "training": {"dpo_methods": ["best_worst"], "sft": {"max_steps": -1}},  # -1: train `epochs`
    }))  # fmt: skip
    assert cfg.merge.weights == {"east_asian": 2.0, "west_european": 1.0}


# -- 6: the README's examples are valid configs ------------------------------------------------------


def _readme_examples() -> list[str]:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Bring your own models and data", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    return [b for b in blocks if b.startswith("languages:")]


def test_readme_has_an_example_for_every_backend():
    text = "\n".join(_readme_examples())
    for backend in ("transformers", "openai", "vllm"):
        assert f"backend: {backend}" in text
    assert "embedded:east_asian" in text


@pytest.mark.parametrize("example", _readme_examples())
def test_readme_examples_validate(tmp_path, example):
    data = yaml.safe_load(example)
    local = [
        s["path"] for s in data.get("prompts", {}).get("sources", []) if s.get("kind") in ("jsonl", "csv", "parquet")
    ]
    local += [v for v in _strings(data) if v.startswith("./")]
    for rel in local:  # the files and folders the example names, next to the config
        target = tmp_path / rel
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("")
        else:
            target.mkdir(parents=True, exist_ok=True)
    load_config(_write(tmp_path, data))


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


# -- model sources and served models ---------------------------------------------------------------


def test_model_source_references_are_checked_up_front(tmp_path):
    err = _error(tmp_path, {"languages": OK_LANGUAGES, "training": {"base_model": "gguf:missing/model.gguf"},
                            "arbiter": {"base_model": "pkg:not-a-real-dist-xyz/model.gguf"}})
    assert "training.base_model" in err and "missing/model.gguf" in err
    assert "arbiter.base_model" in err and "pip install not-a-real-dist-xyz" in err


def test_a_serve_reference_must_name_a_serve_entry(tmp_path):
    teachers = [{"name": "a", "model": "embedded:east_asian"},
                {"name": "b", "backend": "openai", "model": "m", "api_base": "serve:nope", "api_key_env": None}]
    err = _error(tmp_path, {"languages": OK_LANGUAGES, "teachers": teachers})
    assert "teachers.1.api_base" in err and "no `serve` entry named 'nope'" in err


def test_the_smol_profile_validates_with_its_served_teacher():
    cfg = load_config("smol")
    served = [t for t in cfg.resolved_teachers() if t.api_base.startswith("serve:")]
    assert [t.name for t in served] == ["smollm2_served"] and [s.name for s in cfg.serve] == ["smollm2"]
