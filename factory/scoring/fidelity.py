"""Language fidelity: is each completion in its prompt's language, and what that does to its reward.

Policies:
- exclude (default): a wrong-language completion keeps its reward but is marked
  `selectable = False`, so routing and pair builders can never pick it.
- penalize: `penalty` is subtracted from a wrong-language completion's reward;
  it stays selectable.
- off: detection is still recorded (detected_language, language_match) but it
  changes nothing.

Detection uses lingua limited to the run's languages plus `extra_candidates`
(the shared en/es/fr by default: the usual wrong language of a multilingual
model is one of them, and lingua needs at least two candidates).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from factory.langid import detect_many, same_language
from factory.languages import SHARED_LANGUAGES, validate_code


class FidelityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Literal["exclude", "penalize", "off"] = "exclude"
    penalty: float = Field(1.0, ge=0.0)  # subtracted from reward under "penalize" (reward units)
    candidates: list[str] | None = None  # detection candidates; None = the run's languages
    extra_candidates: list[str] = Field(default_factory=lambda: list(SHARED_LANGUAGES))


def candidate_languages(cfg: FidelityConfig, run_languages: Iterable[str]) -> list[str]:
    base = cfg.candidates if cfg.candidates is not None else list(run_languages)
    return sorted({validate_code(c) for c in [*base, *cfg.extra_candidates]})


def detect_fidelity(languages: list[str], texts: list[str], cfg: FidelityConfig) -> pl.DataFrame:
    """Per text: detected_language (None when undecidable) and language_match against its label."""
    if len(languages) != len(texts):
        raise ValueError(f"{len(languages)} labels but {len(texts)} texts")
    detected = detect_many(texts, candidate_languages(cfg, set(languages))) if texts else []
    return pl.DataFrame(
        {
            "detected_language": detected,
            "language_match": [same_language(lang, d) for lang, d in zip(languages, detected, strict=True)],
        },
        schema={"detected_language": pl.String, "language_match": pl.Boolean},
    )


def apply_fidelity(scores: pl.DataFrame, cfg: FidelityConfig) -> pl.DataFrame:
    """Reads reward, language_match; writes reward (penalised under "penalize"), fidelity_penalty, selectable."""
    mismatch = ~pl.col("language_match").fill_null(False)
    penalty = pl.when(mismatch).then(pl.lit(cfg.penalty)).otherwise(0.0) if cfg.policy == "penalize" else pl.lit(0.0)
    selectable = ~mismatch if cfg.policy == "exclude" else pl.lit(True)
    return scores.with_columns(fidelity_penalty=penalty.cast(pl.Float64), selectable=selectable).with_columns(
        reward=pl.col("reward") - pl.col("fidelity_penalty")
    )
