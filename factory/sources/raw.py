"""A raw prompt row as a source yields it, before validation."""

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
        return json.dumps(asdict(self), ensure_ascii=False, default=str)
