"""Language identification with lingua, shared by prompt validation, scoring and judging.

Chinese scripts: lingua says CHINESE for both; we split zh-Hans / zh-Hant by
whether the text uses characters that only exist in one of the two scripts,
and otherwise accept either label for Chinese text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from factory.languages import LANGUAGES

# A few very common characters whose simplified and traditional forms differ.
_TRADITIONAL_ONLY = set("們這個說為國會來時對們後與裡麼門問開關點還過當經讓見從體學車長電話華語")
_SIMPLIFIED_ONLY = set("们这个说为国会来时对后与里么门问开关点还过当经让见从体学车长电话华语")


@lru_cache(maxsize=8)
def _detector(lingua_names: tuple[str, ...]):
    from lingua import Language, LanguageDetectorBuilder

    members = sorted({getattr(Language, n) for n in lingua_names}, key=lambda m: m.name)
    return LanguageDetectorBuilder.from_languages(*members).build()


def _names(candidates: Iterable[str] | None) -> tuple[str, ...]:
    codes = list(candidates) if candidates else list(LANGUAGES)
    return tuple(sorted({LANGUAGES[c].lingua for c in codes}))


def _chinese_script(text: str) -> str | None:
    trad = sum(ch in _TRADITIONAL_ONLY for ch in text)
    simp = sum(ch in _SIMPLIFIED_ONLY for ch in text)
    if trad > simp:
        return "zh-Hant"
    if simp > trad:
        return "zh-Hans"
    return None


def _encodable(text: str) -> str:
    """`text` as lingua can take it: characters with no UTF-8 encoding (lone surrogates,
    e.g. from a JSON "\\ud800" escape) become "?" instead of failing the whole batch.
    Prompt intake quarantines such text before it gets here; model output may still hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def detect_many(texts: Sequence[str], candidates: Iterable[str] | None = None) -> list[str | None]:
    """Detected Aya code per text (None when undecidable, e.g. empty or digits only).

    `candidates` limits the languages considered (all 24 codes by default); fewer
    candidates is faster and more accurate on short texts.
    """
    texts = [_encodable(t) for t in texts]
    names = _names(candidates)
    by_name = {}
    for code, lang in LANGUAGES.items():
        by_name.setdefault(lang.lingua, code)
    detector = _detector(names)
    results = detector.detect_languages_in_parallel_of(list(texts)) if texts else []
    out: list[str | None] = []
    for text, lang in zip(texts, results, strict=True):
        if lang is None:
            out.append(None)
        elif lang.name == "CHINESE":
            out.append(_chinese_script(text) or "zh-Hans")
        else:
            out.append(by_name.get(lang.name))
    return out


def same_language(label: str, detected: str | None) -> bool:
    """Whether `detected` agrees with `label`; Chinese of undecided script matches both scripts."""
    if detected is None:
        return False
    if label.startswith("zh") and detected.startswith("zh"):
        return True
    return label == detected


def contradicts(texts: Sequence[str], label: str, candidates: Iterable[str] | None = None, margin: float = 0.3) -> list[str | None]:
    """For each text, the detected language if it confidently contradicts `label`, else None.

    Confident means the top language's confidence beats the label's by `margin`:
    short texts and names ("Was hälst du von Leonardo di Caprio?") are ambiguous,
    and we quarantine only clear contradictions.
    """
    from lingua import Language

    names = _names(set(candidates or LANGUAGES) | {label})
    detector = _detector(names)
    label_lang = getattr(Language, LANGUAGES[label].lingua)
    out: list[str | None] = []
    detected = detect_many(texts, candidates and set(candidates) | {label})
    for text, det in zip(texts, detected, strict=True):
        if det is None or same_language(label, det):
            out.append(None)
            continue
        values = detector.compute_language_confidence_values(_encodable(text))
        top = values[0].value if values else 0.0
        mine = next((v.value for v in values if v.language == label_lang), 0.0)
        out.append(det if top - mine >= margin else None)
    return out
