"""Refuse merges of incompatible checkpoints: differing tensor names, shapes, vocabularies or embedding tying."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from training.merge.streaming import CheckpointReader

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


TIED_HEAD = "lm_head.weight"  # the output projection that tie_word_embeddings shares with the input embeddings


class IncompatibleModelsError(ValueError):
    """The input checkpoints cannot be merged tensor by tensor."""


def check_same_tensors(readers: dict[str, CheckpointReader]) -> None:
    """All checkpoints must hold the same tensor names with the same shapes."""
    (ref_path, ref), *others = readers.items()
    for path, reader in others:
        missing = sorted(set(ref.infos) - set(reader.infos))
        extra = sorted(set(reader.infos) - set(ref.infos))
        if missing or extra:
            hint = ""
            if "lm_head.weight" in missing + extra:
                hint = " (lm_head.weight differs: one model ties word embeddings, the other does not)"
            raise IncompatibleModelsError(
                f"tensor names differ between {ref_path} and {path}{hint}: "
                f"missing in the latter {missing[:5]}, extra in the latter {extra[:5]}"
            )
        for name, info in ref.infos.items():
            other = reader.infos[name]
            if other.shape != info.shape:
                raise IncompatibleModelsError(
                    f"tensor {name} has shape {list(info.shape)} in {ref_path} but {list(other.shape)} in {path}"
                )


def check_same_vocabulary(folders: list[str | Path]) -> None:
    """Config vocab sizes and tokenizer vocabularies (token -> id) must agree where present."""
    sizes = {str(f): _config(f).get("vocab_size") for f in folders}
    known = {f: s for f, s in sizes.items() if s is not None}
    if len(set(known.values())) > 1:
        raise IncompatibleModelsError(f"vocab_size differs between models: {known}")
    vocabs = {str(f): v for f in folders if (v := vocabulary_fingerprint(f)) is not None}
    if len(set(vocabs.values())) > 1:
        groups: dict[str, list[str]] = {}
        for folder, fp in vocabs.items():
            groups.setdefault(fp[:12], []).append(folder)
        raise IncompatibleModelsError(f"tokenizer vocabularies differ between models: {groups}")


def vocabulary_fingerprint(folder: str | Path) -> str | None:
    """Hash of a tokenizer's token -> id mapping (added tokens included); None without tokenizer files."""
    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        tok = json.loads((folder / "tokenizer.json").read_text())
        vocab = tok.get("model", {}).get("vocab")
        added = sorted((t["id"], t["content"]) for t in tok.get("added_tokens", []))
        payload = json.dumps([vocab, added], sort_keys=True)
    elif (folder / "vocab.json").exists():
        payload = (folder / "vocab.json").read_text()
    else:
        return None
    return hashlib.sha256(payload.encode()).hexdigest()


def _config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.exists():
        return {}
    cfg = json.loads(path.read_text())
    # Multimodal configs nest the language model's vocab size.
    return cfg if "vocab_size" in cfg else cfg.get("text_config", cfg)


def tied_embeddings(folder: str | Path) -> bool | None:
    """The folder's config `tie_word_embeddings` (None when config.json does not say)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        return None
    cfg = json.loads(path.read_text())
    value = cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings"))
    return None if value is None else bool(value)


def check_same_tying(folders: list[str | Path]) -> bool:
    """All models must agree on tie_word_embeddings; True when they are tied.

    A merge of tied and untied models has no faithful output: the loader would either drop the
    merged lm_head or leave it random."""
    known = {str(f): t for f in folders if (t := tied_embeddings(f)) is not None}
    if len(set(known.values())) > 1:
        raise IncompatibleModelsError(
            f"tie_word_embeddings differs (one model ties word embeddings, another does not): {known}"
        )
    return bool(known) and all(known.values())


def drop_tied_head(readers: dict[str, CheckpointReader]) -> list[str]:
    """Forget a stored lm_head.weight in tied checkpoints (some writers store the shared tensor
    twice); the loader ties it to the merged embeddings anyway. Returns the folders that stored it."""
    stored = [path for path, reader in readers.items() if TIED_HEAD in reader.infos]
    for path in stored:
        del readers[path].infos[TIED_HEAD]
    return stored
