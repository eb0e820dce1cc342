"""Ray is optional: loading the definitions (what `factory demo` and `dagster dev` do) never imports it,
and `engine: ray` is a config key like any other."""

import subprocess
import sys

import pytest

from assets.config import ConfigError, parse_config


def test_definitions_do_not_import_ray():
    code = "import sys, assets.definitions; print(sorted(m for m in ('ray', 'dagster_ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_engine_keys():
    cfg = parse_config({"languages": ["ja", "ru"], "generation": {"engine": "ray"}, "scoring": {"engine": "ray"},
                        "ray": {"address": "http://head:8265", "workers": 4, "gpus_per_worker": 1}})  # fmt: skip
    assert (cfg.generation.engine, cfg.scoring.engine, cfg.ray.workers) == ("ray", "ray", 4)
    assert parse_config({"languages": ["ja", "ru"]}).generation.engine == "in_process"
    with pytest.raises((ConfigError, ValueError), match="engine"):
        parse_config({"languages": ["ja", "ru"], "generation": {"engine": "spark"}})
