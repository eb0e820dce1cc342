from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from factory.generation.registry import TeacherConfig, make_backend

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_vllm_module_does_not_import_vllm():
    code = "import sys, factory.generation.vllm_backend, factory.generation.registry; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_vllm_without_the_package_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where it is installed
    with pytest.raises(ImportError, match=r"pip install '\.\[gpu\]'"):
        make_backend(TeacherConfig(name="big", backend="vllm", model="org/some-70b"))


def test_embedded_teacher_needs_a_model_path(tiny_model_dir):
    cfg = TeacherConfig(name="east_asian", model="embedded:east_asian", device="cpu", batch_size=3)
    with pytest.raises(ValueError, match="embedded"):
        make_backend(cfg)
    backend = make_backend(cfg, model_path=str(tiny_model_dir))
    assert backend.name == "east_asian" and backend.batch_size == 3 and backend.device == "cpu"


def test_config_is_strict():
    with pytest.raises(ValidationError):
        TeacherConfig(name="x", model="y", temprature=0.5)
    with pytest.raises(ValidationError):
        TeacherConfig(name="x", model="y", backend="tgi")
