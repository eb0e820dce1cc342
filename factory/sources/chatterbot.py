"""The embedded default prompt source: the `chatterbot-corpus` package's dialogs.

A conversation's first turn is the prompt; the following turns are its
reference replies (kept for reference-based evaluation and the Arbiter's data).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# chatterbot-corpus folder -> Aya code. The other folders (bengali, marathi, swedish,
# thai, ...) are not Aya languages and are not read.
CHATTERBOT_FOLDERS: dict[str, str] = {
    "chinese": "zh-Hans",
    "traditionalchinese": "zh-Hant",
    "dutch": "nl",
    "english": "en",
    "french": "fr",
    "german": "de",
    "hebrew": "he",
    "hindi": "hi",
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "korean": "ko",
    "persian": "fa",
    "portuguese": "pt",
    "russian": "ru",
    "spanish": "es",
    "turkish": "tr",
    "ukrainian": "uk",
}


@dataclass
class Dialog:
    language: str
    prompt: str
    references: list[str] = field(default_factory=list)
    source: str = ""  # e.g. chatterbot:spanish/ai.yml#3


def corpus_dir() -> Path:
    import chatterbot_corpus

    return Path(chatterbot_corpus.__file__).parent / "data"


def _as_text(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def iter_raw(languages: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, list]]:
    """Yield (language, file, index, raw conversation) for every conversation, unvalidated.

    A file that fails to parse yields one ("<lang>", file, -1, error message) so the
    caller can quarantine it instead of aborting the load.
    """
    import yaml

    wanted = set(languages) if languages is not None else None
    for folder, code in sorted(CHATTERBOT_FOLDERS.items()):
        if wanted is not None and code not in wanted:
            continue
        for path in sorted((corpus_dir() / folder).glob("*.yml")):
            rel = f"{folder}/{path.name}"
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8", errors="strict")) or {}
            except (UnicodeDecodeError, yaml.YAMLError) as exc:
                yield code, rel, -1, [f"unreadable file: {exc}"]
                continue
            for i, conv in enumerate(doc.get("conversations") or []):
                yield code, rel, i, conv if isinstance(conv, list) else [conv]


def load_dialogs(languages: Iterable[str] | None = None, max_per_language: int | None = None) -> list[Dialog]:
    """Dialogs with a non-empty prompt, in corpus order (no validation beyond that).

    Used by the tiny-model builders; the `prompts` asset does the full validation.
    """
    out: list[Dialog] = []
    counts: dict[str, int] = {}
    for code, rel, i, conv in iter_raw(languages):
        if i < 0 or not conv:
            continue
        turns = [t for t in (_as_text(x) for x in conv) if t and t.strip()]
        if not turns:
            continue
        if max_per_language is not None and counts.get(code, 0) >= max_per_language:
            continue
        counts[code] = counts.get(code, 0) + 1
        out.append(Dialog(code, turns[0].strip(), [t.strip() for t in turns[1:]], f"chatterbot:{rel}#{i}"))
    return out
