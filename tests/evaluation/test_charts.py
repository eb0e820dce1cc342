from __future__ import annotations

import polars as pl
import pytest

from factory.charts import DEFAULT_STAGES, language_chart, routing_chart, step_chart


def win_rate_table() -> pl.DataFrame:
    rows = []
    for k, stage in enumerate(DEFAULT_STAGES):
        for lang, offset in [("all", 0.0), ("en", 0.05), ("fr", -0.05), ("ja", 0.1)]:
            rate = min(1.0, 0.5 + 0.06 * k + offset)
            rows.append(
                {
                    "stage": stage,
                    "model": f"ck_{k}",
                    "baseline": "ck_base",
                    "language": lang,
                    "win_rate": rate,
                    "ci_low": max(0.0, rate - 0.08),
                    "ci_high": min(1.0, rate + 0.08),
                }
            )
    return pl.DataFrame(rows)


def assert_real_png(path, min_bytes=5_000):
    import matplotlib.image as mpimg

    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.reshape(-1, pixels.shape[-1]).std(axis=0).max() > 0.05  # not a blank canvas


def test_step_chart(tmp_path):
    out = step_chart(win_rate_table(), list(DEFAULT_STAGES), "ck_base", tmp_path / "charts" / "steps.png")
    assert_real_png(out)
    with pytest.raises(ValueError, match="baseline"):
        step_chart(win_rate_table(), list(DEFAULT_STAGES), "missing", tmp_path / "x.png")


def test_language_chart(tmp_path):
    assert_real_png(language_chart(win_rate_table(), list(DEFAULT_STAGES), tmp_path / "langs.png"))


def test_routing_chart_from_counts_and_from_selections(tmp_path):
    stats = pl.DataFrame(
        {"language": ["en", "en", "fr", "ja"], "teacher": ["west", "east", "west", "east"], "wins": [7, 3, 5, 4]}
    )
    assert_real_png(routing_chart(stats, tmp_path / "routing.png"))
    selections = pl.DataFrame({"language": ["en", "en", "fr"], "teacher": ["west", "east", "west"]})
    assert_real_png(routing_chart(selections, tmp_path / "routing_sel.png"))
