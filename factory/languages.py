"""The 23 Aya Expanse languages and the family clusters used for teachers and merging.

This is the one place languages and clusters are defined. Chinese is one language
with two script codes (zh-Hans, zh-Hant), so there are 24 codes for 23 languages.

A cluster's *own* languages are its family's; every cluster also gets the shared
en/es/fr. The embedded teacher pool has one teacher per cluster that has one of a
run's languages of its own (a run of en/es/fr alone selects no teacher), and the
cluster models that are merged follow the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every cluster also trains on these, as in Aya Expanse: shared languages make the
# cluster models mergeable while keeping them diverse.
SHARED_LANGUAGES: tuple[str, ...] = ("en", "es", "fr")


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    family: str
    cluster: str
    lingua: str  # lingua-language-detector's Language enum member name


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in [
        Language("ar", "Arabic", "Arab", "Semitic", "middle_eastern", "ARABIC"),
        Language("zh-Hans", "Chinese (Simplified)", "Hans", "Sinitic", "east_asian", "CHINESE"),
        Language("zh-Hant", "Chinese (Traditional)", "Hant", "Sinitic", "east_asian", "CHINESE"),
        Language("cs", "Czech", "Latn", "Slavic", "east_european", "CZECH"),
        Language("nl", "Dutch", "Latn", "Germanic", "west_european", "DUTCH"),
        Language("en", "English", "Latn", "Germanic", "west_european", "ENGLISH"),
        Language("fr", "French", "Latn", "Romance", "west_european", "FRENCH"),
        Language("de", "German", "Latn", "Germanic", "west_european", "GERMAN"),
        Language("el", "Greek", "Grek", "Hellenic", "east_european", "GREEK"),
        Language("he", "Hebrew", "Hebr", "Semitic", "middle_eastern", "HEBREW"),
        Language("hi", "Hindi", "Deva", "Indo-Aryan", "middle_eastern", "HINDI"),
        Language("id", "Indonesian", "Latn", "Austronesian", "east_asian", "INDONESIAN"),
        Language("it", "Italian", "Latn", "Romance", "west_european", "ITALIAN"),
        Language("ja", "Japanese", "Jpan", "Japonic", "east_asian", "JAPANESE"),
        Language("ko", "Korean", "Kore", "Koreanic", "east_asian", "KOREAN"),
        Language("fa", "Persian", "Arab", "Iranian", "middle_eastern", "PERSIAN"),
        Language("pl", "Polish", "Latn", "Slavic", "east_european", "POLISH"),
        Language("pt", "Portuguese", "Latn", "Romance", "west_european", "PORTUGUESE"),
        Language("ro", "Romanian", "Latn", "Romance", "west_european", "ROMANIAN"),
        Language("ru", "Russian", "Cyrl", "Slavic", "east_european", "RUSSIAN"),
        Language("es", "Spanish", "Latn", "Romance", "west_european", "SPANISH"),
        Language("tr", "Turkish", "Latn", "Turkic", "middle_eastern", "TURKISH"),
        Language("uk", "Ukrainian", "Cyrl", "Slavic", "east_european", "UKRAINIAN"),
        Language("vi", "Vietnamese", "Latn", "Austroasiatic", "east_asian", "VIETNAMESE"),
    ]
}

LANGUAGE_CODES: tuple[str, ...] = tuple(LANGUAGES)


def _build_clusters() -> dict[str, tuple[str, ...]]:
    clusters: dict[str, list[str]] = {}
    for lang in LANGUAGES.values():
        clusters.setdefault(lang.cluster, [])
        if lang.code not in SHARED_LANGUAGES:
            clusters[lang.cluster].append(lang.code)
    return {name: tuple(codes) + SHARED_LANGUAGES for name, codes in clusters.items()}


# cluster name -> its own languages followed by the shared en/es/fr.
CLUSTERS: dict[str, tuple[str, ...]] = _build_clusters()


def validate_code(code: str) -> str:
    """Return `code` if it is an Aya language code, else raise a ValueError naming it."""
    if code not in LANGUAGES:
        raise ValueError(f"unknown language code {code!r}; expected one of {', '.join(LANGUAGE_CODES)}")
    return code


def cluster_of(code: str) -> str:
    return LANGUAGES[validate_code(code)].cluster


def own_languages(cluster: str) -> tuple[str, ...]:
    """The cluster's languages without the shared ones (where its teacher should win)."""
    return tuple(c for c in CLUSTERS[cluster] if c not in SHARED_LANGUAGES)


def describe_clusters(indent: str = "  ") -> str:
    """One line per cluster: its own languages, then the shared ones (for error messages and docs)."""
    shared = ", ".join(SHARED_LANGUAGES)
    return "\n".join(f"{indent}{name}: {', '.join(own_languages(name))} (+ {shared})" for name in CLUSTERS)
