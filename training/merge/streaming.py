"""Tensor-by-tensor safetensors I/O over sharded or unsharded Hugging Face checkpoints.

Reading uses `safe_open` with the `pread` backend where available, so a tensor's bytes
are copied into memory owned by the tensor and released with it (an mmap would keep
every touched page of every input resident until the file is closed).

Writing never buffers a shard: output names, shapes and dtypes are known before the
merge starts, so each shard's safetensors header is computed up front and tensor
bytes are appended as they are produced. Peak memory is a few tensors, not a model.
"""

from __future__ import annotations

import json
import queue
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype codes and element sizes
_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_ST_FROM_TORCH_NAME = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
FLOAT_CODES = {"F64", "F32", "F16", "BF16"}


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and safetensors dtype code of one stored tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * _ST_SIZES[self.dtype]


def st_code(dtype: torch.dtype | str) -> str:
    """safetensors dtype code ("F32", "BF16", ...) of a torch dtype or its name."""
    name = str(dtype).removeprefix("torch.")
    try:
        return _ST_FROM_TORCH_NAME[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; supported: {', '.join(_ST_FROM_TORCH_NAME)}") from None


def torch_dtype(code: str) -> torch.dtype:
    """torch dtype for a safetensors dtype code."""
    import torch

    names = {v: k for k, v in _ST_FROM_TORCH_NAME.items()}
    return getattr(torch, names[code])


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse one safetensors file's header (8-byte little-endian length + JSON) without reading data."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return {name: TensorInfo(name, tuple(v["shape"]), v["dtype"]) for name, v in header.items()}


def weight_files(folder: str | Path) -> dict[str, Path]:
    """Map every tensor name of a checkpoint folder to the safetensors file that holds it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    index = folder / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    if (folder / SINGLE_FILE).exists():
        return dict.fromkeys(read_header(folder / SINGLE_FILE), folder / SINGLE_FILE)
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ValueError(f"{folder} holds PyTorch pickle weights; only safetensors checkpoints can be merged")
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}")


class CheckpointReader:
    """Lazy reader of a (possibly sharded) safetensors checkpoint: one tensor at a time."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.files = weight_files(self.folder)
        self.infos: dict[str, TensorInfo] = {}
        for file in sorted(set(self.files.values())):
            for name, info in read_header(file).items():
                if self.files.get(name) == file:
                    self.infos[name] = info
        missing = sorted(set(self.files) - set(self.infos))
        if missing:
            raise ValueError(f"{self.folder}: index names tensors missing from their shards: {missing[:5]}")
        self._handles: dict[Path, object] = {}

    def names(self) -> list[str]:
        """Tensor names in a stable order (sorted)."""
        return sorted(self.infos)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into memory it owns."""
        file = self.files[name]
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = _open(file)
        return handle.get_tensor(name)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(file: Path):
    from safetensors import safe_open

    try:
        handle = safe_open(str(file), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors < 0.8 has no backend choice; mmap it is
        handle = safe_open(str(file), framework="pt", device="cpu")
    return handle.__enter__()


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "500MB", "2GB", "64KiB"."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?", size.strip().upper())
    if not m:
        raise ValueError(f"cannot parse size {size!r}; use bytes or e.g. '500MB', '2GB'")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** "_KMGT".index(m.group(2) or "_"))


def plan_shards(infos: list[TensorInfo], max_shard_bytes: int) -> list[list[TensorInfo]]:
    """Split tensors, in order, into shards of at most `max_shard_bytes` (a bigger tensor gets its own)."""
    shards: list[list[TensorInfo]] = [[]]
    size = 0
    for info in infos:
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(info)
        size += info.nbytes
    return shards


class StreamingCheckpointWriter:
    """Write tensors in a fixed, pre-declared order into safetensors shards, never buffering a shard.

    Produces `model.safetensors` (one shard) or `model-0000i-of-0000n.safetensors` plus
    `model.safetensors.index.json`, the layout `from_pretrained` loads. With `background`,
    a writer thread does the file I/O (which releases the GIL) while the caller computes
    the next tensor; at most `max_pending` tensors wait in its queue.
    """

    def __init__(
        self,
        folder: str | Path,
        infos: list[TensorInfo],
        max_shard_bytes: int,
        background: bool = False,
        max_pending: int = 1,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards = plan_shards(infos, max_shard_bytes)
        n = len(self.shards)
        self.filenames = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._order = [(s, info) for s, shard in enumerate(self.shards) for info in shard]
        self._pos = 0
        self._open_shard = -1
        self._file: BinaryIO | None = None
        self._error: BaseException | None = None
        self._pending: queue.Queue | None = None
        if background:
            self._pending = queue.Queue(maxsize=max_pending)
            self._thread = threading.Thread(target=self._drain, name="merge-writer", daemon=True)
            self._thread.start()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; it must match the declared name, shape and dtype."""
        self._raise_background_error()
        if self._pos >= len(self._order):
            raise ValueError(f"unexpected tensor {name!r}: all declared tensors are written")
        shard, info = self._order[self._pos]
        if name != info.name:
            raise ValueError(f"tensors must be written in the declared order: expected {info.name!r}, got {name!r}")
        if tuple(tensor.shape) != info.shape or st_code(tensor.dtype) != info.dtype:
            raise ValueError(
                f"{name}: expected shape {info.shape} {info.dtype}, got {tuple(tensor.shape)} {st_code(tensor.dtype)}"
            )
        self._pos += 1
        if self._pending is None:
            self._write_now(shard, tensor)
        else:
            self._pending.put((shard, tensor))

    def _drain(self) -> None:
        while (item := self._pending.get()) is not None:
            if self._error is None:
                try:
                    self._write_now(*item)
                except BaseException as e:  # surfaced to the caller on its next call
                    self._error = e
            del item

    def _raise_background_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the merged checkpoint failed: {self._error}") from self._error

    def _write_now(self, shard: int, tensor: torch.Tensor) -> None:
        if shard != self._open_shard:
            self._start_shard(shard)
        self._file.write(_tensor_bytes(tensor))

    def _start_shard(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for info in self.shards[shard]:
            header[info.name] = {
                "dtype": info.dtype,
                "shape": list(info.shape),
                "data_offsets": [offset, offset + info.nbytes],
            }
            offset += info.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        self._file = open(self.folder / self.filenames[shard], "wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)
        self._open_shard = shard

    def _stop(self) -> None:
        if self._pending is not None:
            self._pending.put(None)
            self._thread.join()
            self._pending = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Finish the last shard and, when sharded, write the index json."""
        self._stop()
        self._raise_background_error()
        if self._pos != len(self._order):
            missing = [info.name for _, info in self._order[self._pos :]]
            raise ValueError(f"{len(missing)} declared tensors were never written, e.g. {missing[:3]}")
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(info.nbytes for _, info in self._order)},
                "weight_map": {info.name: self.filenames[s] for s, info in self._order},
            }
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        """Stop writing without finishing (the caller removes the folder)."""
        self._stop()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    import torch

    t = tensor.detach().contiguous().cpu()
    if t.dim() == 0:
        t = t.reshape(1)
    # A uint8 view works for every dtype (bfloat16 included) without copying.
    return memoryview(t.view(torch.uint8).numpy()).cast("B")
