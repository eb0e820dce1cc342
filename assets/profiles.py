"""The shipped run profiles (assets/configs/*.yaml), named without loading the config models, so
`factory --help` can list them and still start fast."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


def profile_names() -> list[str]:
    """The names `--config` takes for the shipped profiles (default first)."""
    return sorted((p.stem for p in CONFIG_DIR.glob("*.yaml")), key=lambda name: (name != DEFAULT_CONFIG.stem, name))
