"""Tensor-by-tensor reading of (sharded) checkpoints and streaming shard writing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from training.merge.streaming import (
    CheckpointReader,
    StreamingCheckpointWriter,
    TensorInfo,
    parse_size,
    plan_shards,
    st_code,
)


def test_sharded_and_single_file_checkpoints_read_the_same(tiny_models):
    single, sharded = CheckpointReader(tiny_models["ft_b"]), CheckpointReader(tiny_models["ft_b_sharded"])
    assert len(set(sharded.files.values())) > 1
    assert single.names() == sharded.names()
    assert "lm_head.weight" not in single.names()  # tied embeddings are not stored
    for name in single.names():
        assert torch.equal(single.get(name), sharded.get(name))
    single.close()
    sharded.close()


def test_reader_refuses_missing_or_pickle_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        CheckpointReader(tmp_path / "nope")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="only safetensors"):
        CheckpointReader(tmp_path)


def _tensors():
    return {
        "a": torch.arange(6, dtype=torch.float32).view(2, 3),
        "b": torch.randn(100, 10).to(torch.bfloat16),
        "c": torch.tensor(3, dtype=torch.int64),
        "d": torch.randn(5, dtype=torch.float16),
    }


def _infos(tensors):
    return [TensorInfo(k, tuple(v.shape), st_code(v.dtype)) for k, v in tensors.items()]


def test_writer_streams_shards_that_safetensors_loads(tmp_path):
    tensors = _tensors()
    writer = StreamingCheckpointWriter(tmp_path, _infos(tensors), max_shard_bytes=1000)
    for name, t in tensors.items():
        writer.write(name, t)
    writer.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == len(writer.shards) >= 2
    loaded = {}
    for f in files:
        loaded.update(load_file(tmp_path / f))
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t)


def test_writer_single_shard_and_order_checks(tmp_path):
    tensors = _tensors()
    writer = StreamingCheckpointWriter(tmp_path, _infos(tensors), max_shard_bytes=10**9)
    assert writer.filenames == ["model.safetensors"]
    with pytest.raises(ValueError, match="declared order: expected 'a', got 'b'"):
        writer.write("b", tensors["b"])
    with pytest.raises(ValueError, match="expected shape"):
        writer.write("a", tensors["a"].double())
    writer.write("a", tensors["a"])
    with pytest.raises(ValueError, match="never written"):
        writer.close()


def test_plan_shards_and_sizes():
    infos = [TensorInfo(str(i), (10,), "F32") for i in range(5)]  # 40 bytes each
    assert [len(s) for s in plan_shards(infos, 100)] == [2, 2, 1]
    assert [len(s) for s in plan_shards(infos, 10)] == [1, 1, 1, 1, 1]  # oversized tensors get their own shard
    assert parse_size("2GB") == 2 * 10**9 and parse_size("64KiB") == 65536 and parse_size(123) == 123
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size("lots")


def test_read_into_reuses_the_callers_buffer(tiny_models):
    with CheckpointReader(tiny_models["ft_b_sharded"]) as reader:
        names = reader.names()
        largest = max(reader.infos[n].nbytes for n in names)
        buffer = torch.empty(largest, dtype=torch.uint8)
        for name in names:
            got = reader.read_into(name, buffer)
            assert got.data_ptr() == buffer.data_ptr()  # no new memory
            assert torch.equal(got, reader.get(name))
        with pytest.raises(ValueError, match="at least"):
            reader.read_into(names[0], torch.empty(1, dtype=torch.uint8))


def test_reader_refuses_a_truncated_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(64, 64)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        CheckpointReader(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        CheckpointReader(tmp_path)


def test_writer_files_are_exactly_header_plus_data(tmp_path):
    # shard files are preallocated to their final size: nothing may be left over at the end
    tensors = _tensors()
    writer = StreamingCheckpointWriter(tmp_path, _infos(tensors), max_shard_bytes=10**9)
    for name, t in tensors.items():
        writer.write(name, t)
    writer.close()
    raw = (tmp_path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert len(raw) == 8 + header_len + sum(t.numel() * t.element_size() for t in tensors.values())
    assert (8 + header_len) % 8 == 0
