"""A `serve:` teacher's completion ids name the weights the serve entry points at (no server started)."""

from __future__ import annotations

from assets.common import Serving, resolve_slot
from assets.config import FactoryConfig
from factory.generation.registry import TeacherConfig, model_identity
from factory.ids import weights_digest


class _Servers:
    """Records which serve entries were asked for an endpoint (what ModelServers would start)."""

    def __init__(self):
        self.started: list[str] = []

    def endpoint(self, cfg, name, home):
        self.started.append(name)
        spec = next(s for s in cfg.serve if s.name == name)
        return "http://127.0.0.1:1/v1", spec.model


def test_pointing_a_serve_entry_at_another_checkpoint_changes_the_identity(tmp_path):
    teacher = TeacherConfig(name="t", backend="openai", model="smol", api_base="serve:smol")
    identities = []
    for name, weights in (("a", b"one"), ("b", b"two")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)
        cfg = FactoryConfig(
            languages=["en"],
            teachers=[teacher, teacher.model_copy(update={"name": "u"})],
            serve=[{"name": "smol", "model": str(folder)}],
        )
        serving = Serving(cfg, tmp_path, _Servers())
        assert serving.identity("smol") == weights_digest(folder) and serving.servers.started == []
        ident, build = resolve_slot(teacher, None, tmp_path, serving)
        assert (ident.api_base, ident.model, build.model) == ("serve:smol", "smol", str(folder))
        identities.append(model_identity(ident))
    assert identities[0] != identities[1]
    assert identities[0]["served"] == weights_digest(tmp_path / "a")
