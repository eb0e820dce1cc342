from __future__ import annotations

import polars as pl
import pytest

import factory.charts as charts
from factory.charts import language_chart, routing_chart, step_chart
from factory.evaluation import STAGES

DEFAULT_STAGES = tuple(stage for stage, _ in STAGES)

N = {"all": 31, "en": 20, "fr": 10, "ja": 1}


def win_rate_table() -> pl.DataFrame:
    rows = []
    for k, stage in enumerate(DEFAULT_STAGES):
        for lang, offset in [("all", 0.0), ("en", 0.05), ("fr", -0.05), ("ja", 0.1)]:
            rate = 1.0 if lang == "ja" else min(1.0, 0.5 + 0.06 * k + offset)  # one prompt: a saturated rate
            rows.append(
                {
                    "stage": stage,
                    "model": f"ck_{k}",
                    "baseline": "ck_base",
                    "language": lang,
                    "win_rate": rate,
                    "ci_low": max(0.0, rate - 0.08),
                    "ci_high": min(1.0, rate + 0.08),
                    # fr lost one judgment in the last stage, so its n is a range
                    "n": N[lang] - (1 if (lang == "fr" and stage == DEFAULT_STAGES[-1]) else 0),
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


@pytest.fixture
def figures(monkeypatch):
    """The figures the chart functions draw, kept open for inspection (the PNGs are still written)."""
    kept = []
    save = charts._save

    def keep(fig, out_png):
        kept.append(fig)
        return save(fig, out_png)

    monkeypatch.setattr(charts, "_save", keep)
    return kept


def error_bars(ax) -> list[tuple[float, float]]:
    """(low, high) of every error bar drawn on `ax`, in data units."""
    from matplotlib.container import ErrorbarContainer

    spans = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for segment in c.lines[2][0].get_segments():
                (x0, y0), (x1, y1) = segment
                spans.append((min(x0, x1), max(x0, x1)) if y0 == y1 else (min(y0, y1), max(y0, y1)))
    return sorted((round(a, 6), round(b, 6)) for a, b in spans)


def ci_spans(rows: pl.DataFrame) -> list[tuple[float, float]]:
    return sorted((round(100 * a, 6), round(100 * b, 6)) for a, b in zip(rows["ci_low"], rows["ci_high"], strict=True))


def test_step_chart(tmp_path):
    out = step_chart(win_rate_table(), list(DEFAULT_STAGES), "ck_base", tmp_path / "charts" / "steps.png")
    assert_real_png(out)
    with pytest.raises(ValueError, match="baseline"):
        step_chart(win_rate_table(), list(DEFAULT_STAGES), "missing", tmp_path / "x.png")


def test_step_chart_shows_n_ci_baseline_and_tie_rule(tmp_path, figures):
    table = win_rate_table()
    step_chart(table, list(DEFAULT_STAGES), "ck_base", tmp_path / "steps.png")
    (ax,) = figures[0].axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "sft_arbitrage\nn=31, 3 langs" and len(ticks) == len(DEFAULT_STAGES)
    assert "ck_base" in ax.get_title() and "ties count half" in ax.get_title()
    overall = table.filter(pl.col("language") == "all")
    expected = ci_spans(overall)
    assert error_bars(ax) == expected


def test_language_chart(tmp_path):
    assert_real_png(language_chart(win_rate_table(), list(DEFAULT_STAGES), tmp_path / "langs.png"))


def test_language_chart_shows_n_ci_baseline_and_tie_rule(tmp_path, figures):
    table = win_rate_table()
    language_chart(table, list(DEFAULT_STAGES), tmp_path / "langs.png")
    (ax,) = figures[0].axes
    labels = sorted(t.get_text() for t in ax.get_yticklabels())
    assert labels == ["en (n=20)", "fr (n=9-10)", "ja (n=1)"]
    title = ax.get_title()
    assert "ck_base" in title and "ties count half" in title and "CI" in title
    per_language = table.filter(pl.col("language") != "all")
    expected = ci_spans(per_language)
    assert error_bars(ax) == expected  # one CI bar per (language, stage)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(DEFAULT_STAGES)


def test_language_chart_n_from_counts_and_baseline_choice(tmp_path, figures):
    table = win_rate_table().drop("n").with_columns(wins=pl.lit(2), ties=pl.lit(1), losses=pl.lit(0))
    other = table.with_columns(baseline=pl.lit("other"))
    with pytest.raises(ValueError, match="baseline_name"):
        language_chart(pl.concat([table, other]), list(DEFAULT_STAGES), tmp_path / "a.png")
    language_chart(pl.concat([table, other]), list(DEFAULT_STAGES), tmp_path / "b.png", baseline_name="other")
    (ax,) = figures[0].axes
    assert {t.get_text() for t in ax.get_yticklabels()} == {"en (n=3)", "fr (n=3)", "ja (n=3)"}
    assert "other" in ax.get_title()
    with pytest.raises(ValueError, match="n"):
        language_chart(table.drop("wins"), list(DEFAULT_STAGES), tmp_path / "c.png")


def test_routing_chart_from_counts_and_from_selections(tmp_path):
    stats = pl.DataFrame(
        {"language": ["en", "en", "fr", "ja"], "teacher": ["west", "east", "west", "east"], "wins": [7, 3, 5, 4]}
    )
    assert_real_png(routing_chart(stats, tmp_path / "routing.png"))
    selections = pl.DataFrame({"language": ["en", "en", "fr"], "teacher": ["west", "east", "west"]})
    assert_real_png(routing_chart(selections, tmp_path / "routing_sel.png"))


def test_head_to_head_chart_shows_each_pair_with_ci_and_mdd(tmp_path, figures):
    from factory.charts import head_to_head_chart

    table = pl.DataFrame([
        {"stage": "dpo_offline", "opponent": "sft_arbitrage", "language": "all", "win_rate": 0.52, "ci_low": 0.47,
         "ci_high": 0.57, "mdd": 0.05, "n": 190},
        {"stage": "merged", "opponent": "cluster_specialists", "language": "all", "win_rate": 0.45, "ci_low": 0.39,
         "ci_high": 0.51, "mdd": 0.06, "n": 140},
        {"stage": "merged", "opponent": "cluster_specialists", "language": "ja", "win_rate": 0.4, "ci_low": 0.2,
         "ci_high": 0.6, "mdd": 0.2, "n": 10},
    ])
    assert_real_png(head_to_head_chart(table, tmp_path / "h2h.png"))
    (ax,) = figures[0].axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["dpo_offline\nvs sft_arbitrage\nn=190", "merged\nvs cluster_specialists\nn=140"]
    assert error_bars(ax) == ci_spans(table.filter(pl.col("language") == "all"))
    assert any("mdd 6.0" in t.get_text() for t in ax.texts)
    with pytest.raises(ValueError, match="head-to-head"):
        head_to_head_chart(table.filter(pl.col("language") == "xx"), tmp_path / "none.png")
