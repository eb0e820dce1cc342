"""Language identification with lingua, shared by prompt validation, scoring and judging.

Chinese scripts: lingua says CHINESE for both; we split zh-Hans / zh-Hant by
whether the text uses characters that only exist in one of the two scripts,
and otherwise accept either label for Chinese text.

Mixed-script text is decided here, not by lingua. lingua's rule-based step (in
Rust) counts words per script in std HashMaps, whose iteration order is seeded
at random per map; where two scripts tie (e.g. 私は followed by Hangul), the
winner changed from one call to the next, even within one process, each time
with confidence 1.0. PYTHONHASHSEED has no effect on it. So a text whose
letters come from more than one script is reduced to its dominant script
(most letters; kana makes Han count as Japanese; ties broken by the fixed order
of SCRIPT_ORDER) before lingua sees it, and lingua only ever decides
single-script text, where its result does not depend on iteration order.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
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


# Unicode script (first word of a letter's Unicode name) -> the script key used here.
_SCRIPT_OF_NAME = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "HEBREW": "Hebr", "ARABIC": "Arab",
    "DEVANAGARI": "Deva", "HANGUL": "Hang", "HIRAGANA": "Kana", "KATAKANA": "Kana", "CJK": "Hani",
}
# Tie-break order for mixed-script text (fixed, so every process decides the same way).
SCRIPT_ORDER = ("Latn", "Cyrl", "Arab", "Jpan", "Hani", "Hang", "Grek", "Hebr", "Deva", "Zyyy")
# A language's script (languages.Language.script) -> the letter scripts that count as written in it.
_LETTERS_OF = {"Jpan": ("Kana", "Hani"), "Kore": ("Hang",), "Hans": ("Hani",), "Hant": ("Hani",)}


@lru_cache(maxsize=65536)
def _letter_script(ch: str) -> str:
    """The script key of one letter ("Zyyy" for letters of scripts no Aya language uses)."""
    name = unicodedata.name(ch, "")
    word = name.split(" ", 1)[0]
    if word in ("HALFWIDTH", "FULLWIDTH"):
        word = name.split(" ", 2)[1] if name.count(" ") >= 1 else word
    return _SCRIPT_OF_NAME.get(word, "Zyyy")


def script_counts(text: str) -> Counter:
    """Letters per script key in `text`; with any kana, Han letters count as Japanese ("Jpan")."""
    counts = Counter(_letter_script(ch) for ch in text if ch.isalpha())
    if counts.get("Kana"):
        counts["Jpan"] = counts.pop("Kana") + counts.pop("Hani", 0)
    return counts


def _keep_scripts(text: str, scripts: Iterable[str]) -> str:
    """`text` with every letter of another script replaced by a space (non-letters kept)."""
    keep = set(scripts)
    return "".join(ch if not ch.isalpha() or _letter_script(ch) in keep else " " for ch in text)


def _single_script(text: str) -> str:
    """Mixed-script text reduced to its dominant script (deterministic; see the module docstring)."""
    counts = script_counts(text)
    if len(counts) <= 1:
        return text
    top = max(counts.values())
    dominant = next(s for s in SCRIPT_ORDER if counts.get(s) == top)
    return _keep_scripts(text, ("Kana", "Hani") if dominant == "Jpan" else (dominant,))


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
    texts = [_single_script(_encodable(t)) for t in texts]
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
        values = detector.compute_language_confidence_values(_single_script(_encodable(text)))
        top = values[0].value if values else 0.0
        mine = next((v.value for v in values if v.language == label_lang), 0.0)
        out.append(det if top - mine >= margin else None)
    return out


def language_share(texts: Sequence[str], language: str, candidates: Iterable[str] | None = None) -> list[float]:
    """How much of each text is in `language`, from 0 to 1: the share of its letters written in the
    language's script, times lingua's confidence for the language on those letters alone (1 for a
    script no other candidate uses, e.g. Hangul for ko). 0 for text without letters.

    Deterministic across processes (lingua sees single-script text only). It grades answers that
    are not (wholly) in the language: "안녕 hello there" is partly Korean, "hello there" not at all.
    """
    from lingua import Language

    code = LANGUAGES[language]
    scripts = _LETTERS_OF.get(code.script, (code.script,))
    names = _names(set(candidates or LANGUAGES) | {language})
    shared = any(LANGUAGES[c].lingua != code.lingua and set(_LETTERS_OF.get(LANGUAGES[c].script, (LANGUAGES[c].script,))) & set(scripts)
                 for c in LANGUAGES if LANGUAGES[c].lingua in names)
    shares, reduced = [], []
    for text in texts:
        letters = [ch for ch in _encodable(text) if ch.isalpha()]
        mine = sum(_letter_script(ch) in scripts for ch in letters)
        shares.append(mine / len(letters) if letters else 0.0)
        reduced.append(_keep_scripts(_encodable(text), scripts))
    if not shared:
        return shares
    target = getattr(Language, code.lingua)
    confidences = _detector(names).compute_language_confidence_in_parallel(reduced, target)
    return [float(s * c) if s else 0.0 for s, c in zip(shares, confidences, strict=True)]
