"""Tensor-by-tensor safetensors I/O over sharded or unsharded Hugging Face checkpoints.

Reading parses each file's header once and copies a tensor's bytes with `os.preadv`
straight into memory the caller chooses: a fresh tensor (`get`) or a reused buffer
(`read_into`: the merge runner keeps one buffer per input). Page-faulting fresh memory
for every tensor costs several times the copy itself on CPU, and an mmap would keep
every touched page of every input resident until the file is closed.

Writing never buffers a shard: output names, shapes and dtypes are known before the
merge starts, so each shard's safetensors header is computed up front, the file is
preallocated to its final size and tensor bytes are written as they are produced.
Peak memory is a few tensors, not a model.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
    return {name: info for name, (info, _) in _read_layout(Path(path)).items()}


def _read_layout(path: Path) -> dict[str, tuple[TensorInfo, int]]:
    """Each tensor's info and the absolute file offset of its bytes, validated against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {length} exceeds the file)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header: {e}") from None
    header.pop("__metadata__", None)
    layout = {}
    for name, v in header.items():
        try:
            info = TensorInfo(name, tuple(int(d) for d in v["shape"]), v["dtype"])
            begin, stop = (int(o) for o in v["data_offsets"])
            nbytes = info.nbytes
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed header entry for {name!r}: {e!r}") from None
        if stop - begin != nbytes or begin < 0 or 8 + length + stop > size:
            raise ValueError(
                f"{path}: tensor {name!r} ({info.dtype} {list(info.shape)}) has data_offsets "
                f"[{begin}, {stop}] that do not fit its size or the file (truncated download?)"
            )
        layout[name] = (info, 8 + length + begin)
    return layout


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


def byte_buffer(nbytes: int) -> torch.Tensor:
    """An uninitialised 1-D uint8 tensor for `CheckpointReader.read_into`."""
    import torch

    return torch.empty(nbytes, dtype=torch.uint8)


class CheckpointReader:
    """Lazy reader of a (possibly sharded) safetensors checkpoint: one tensor at a time."""

    def __init__(self, folder: str | Path) -> None:
        if sys.byteorder != "little":
            raise RuntimeError("safetensors data is little-endian; this reader supports little-endian hosts only")
        self.folder = Path(folder)
        self.files = weight_files(self.folder)
        self.infos: dict[str, TensorInfo] = {}
        self._offsets: dict[str, int] = {}
        for file in sorted(set(self.files.values())):
            for name, (info, offset) in _read_layout(file).items():
                if self.files.get(name) == file:
                    self.infos[name] = info
                    self._offsets[name] = offset
        missing = sorted(set(self.files) - set(self.infos))
        if missing:
            raise ValueError(f"{self.folder}: index names tensors missing from their shards: {missing[:5]}")
        self._fds: dict[Path, int] = {}

    def names(self) -> list[str]:
        """Tensor names in a stable order (sorted)."""
        return sorted(self.infos)

    @property
    def largest_nbytes(self) -> int:
        """Size of the checkpoint's largest tensor: a `byte_buffer` this big fits any of them."""
        return max((info.nbytes for info in self.infos.values()), default=0)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into fresh memory it owns."""
        return self.read_into(name, byte_buffer(self.infos[name].nbytes))

    def read_into(self, name: str, buffer: torch.Tensor) -> torch.Tensor:
        """Read one tensor's bytes into the front of `buffer` (a contiguous uint8 tensor at least that
        large) and return a view of them with the tensor's dtype and shape. No new memory is touched."""
        import torch

        info = self.infos[name]
        n = info.nbytes
        if buffer.dtype != torch.uint8 or buffer.dim() != 1 or not buffer.is_contiguous() or buffer.numel() < n:
            raise ValueError(f"{name}: read_into needs a contiguous 1-D uint8 buffer of at least {n} bytes")
        file = self.files[name]
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        view = memoryview(buffer[:n].numpy()).cast("B")
        offset, done = self._offsets[name], 0
        while done < n:  # one preadv moves at most ~2 GiB on Linux: loop
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"{file}: unexpected end of file reading {name!r} ({done} of {n} bytes)")
            done += got
        out = buffer[:n].view(torch_dtype(info.dtype))
        return out.view(info.shape) if info.shape else out.view(())

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    `model.safetensors.index.json`, the layout `from_pretrained` loads. Each shard file is
    preallocated to its final size when opened (on ext4, 536 MB of tensor writes took 0.07 s
    preallocated against 0.11 s appending, medians; docs/BENCHMARKS.md).

    Writes happen in the caller's thread. A writer thread was measured and dropped: with it
    the copies into the page cache ran at 0.5-0.6 GB/s on the 2-vCPU benchmark machine and
    merges were slower, and the kernel already writes dirty pages back asynchronously.
    """

    def __init__(self, folder: str | Path, infos: list[TensorInfo], max_shard_bytes: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards = plan_shards(infos, max_shard_bytes)
        n = len(self.shards)
        self.filenames = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._order = [(s, info) for s, shard in enumerate(self.shards) for info in shard]
        self._pos = 0
        self._open_shard = -1
        self._fd: int | None = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; it must match the declared name, shape and dtype."""
        if self._pos >= len(self._order):
            raise ValueError(f"unexpected tensor {name!r}: all declared tensors are written")
        shard, info = self._order[self._pos]
        if name != info.name:
            raise ValueError(f"tensors must be written in the declared order: expected {info.name!r}, got {name!r}")
        if tuple(tensor.shape) != info.shape or st_code(tensor.dtype) != info.dtype:
            raise ValueError(
                f"{name}: expected shape {info.shape} {info.dtype}, got {tuple(tensor.shape)} {st_code(tensor.dtype)}"
            )
        if shard != self._open_shard:
            self._start_shard(shard)
        data = _tensor_bytes(tensor)
        while data:
            data = data[os.write(self._fd, data) :]
        self._pos += 1

    def _start_shard(self, shard: int) -> None:
        self._close_file()
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
        self._fd = os.open(self.folder / self.filenames[shard], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _preallocate(self._fd, 8 + len(raw) + offset)
        os.write(self._fd, struct.pack("<Q", len(raw)) + raw)
        self._open_shard = shard

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Finish the last shard and, when sharded, write the index json."""
        self._close_file()
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
        self._close_file()


def _preallocate(fd: int, size: int) -> None:
    """Reserve the file's blocks up front where the OS can (a no-op elsewhere; writes still extend it)."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:  # e.g. no space reserved on this filesystem: the writes report real errors
        pass


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    import torch

    t = tensor.detach().contiguous().cpu()
    if t.dim() == 0:
        t = t.reshape(1)
    # A uint8 view works for every dtype (bfloat16 included) without copying.
    return memoryview(t.view(torch.uint8).numpy()).cast("B")
