"""A raw prompt row as a source yields it, before validation, and the text checks
every source shares (text that is not valid Unicode)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class RawPrompt:
    language: object  # the label as found in the data
    text: object  # the prompt; for an unreadable row, what was read of it (for the payload)
    references: list[str] = field(default_factory=list)
    source: str = ""
    row_key: str = ""  # where it came from: file:line, dataset row, ...
    error: str | None = None  # a read problem found before validation (bad bytes, bad JSON)
    error_code: str | None = None  # its quarantine code: malformed, bad_encoding, missing_column

    def payload(self) -> str:
        """The row as JSON. Non-ASCII text stays readable, unless the row holds text that
        is not valid Unicode (a lone surrogate): then everything is escaped, so the payload
        itself can still be stored as UTF-8."""
        row = asdict(self)
        out = json.dumps(row, ensure_ascii=False, default=str)
        return out if utf8_problem(out) is None else json.dumps(row, ensure_ascii=True, default=str)


def utf8_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (a lone surrogate, e.g. from a JSON "\\ud800"
    escape, which `json.loads` accepts), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}, which has no UTF-8 encoding"
    return None


def utf8_safe(text: str) -> str:
    """`text` with anything UTF-8 cannot encode written as a backslash escape (for keys
    and reasons, which must always be storable)."""
    return text if utf8_problem(text) is None else text.encode("utf-8", "backslashreplace").decode("utf-8")
