"""Stable content-hash ids: the one place ids are computed.

Rerunning the same work yields the same ids, which is what makes resume and
dedup work. Ids are 16 hex chars of BLAKE2b over a canonical JSON encoding.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any


def normalize_text(text: str) -> str:
    """NFC-normalise and strip surrounding whitespace (the identity of a prompt's text)."""
    return unicodedata.normalize("NFC", text).strip()


def content_hash(*parts: Any, size: int = 8) -> str:
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=size).hexdigest()


def prompt_id(language: str, text: str) -> str:
    return "p_" + content_hash("prompt", language, normalize_text(text))


def completion_id(prompt_id: str, teacher: str, sampling: dict[str, Any], sample_index: int) -> str:
    return "c_" + content_hash("completion", prompt_id, teacher, sampling, sample_index)


def pair_id(prompt_id: str, method: str, round: int, chosen_completion_id: str, rejected_completion_id: str) -> str:
    return "pr_" + content_hash("pair", prompt_id, method, round, chosen_completion_id, rejected_completion_id)


def checkpoint_id(stage: str, config: dict[str, Any], datasets: dict[str, Any], parents: list[str]) -> str:
    return "ck_" + content_hash("checkpoint", stage, config, datasets, sorted(parents))


def judgment_id(prompt_id: str, model_a: str, model_b: str, judge: str, order: str) -> str:
    return "j_" + content_hash("judgment", prompt_id, model_a, model_b, judge, order)
