"""One place that decides where training and inference run.

CUDA when present (bfloat16), else CPU (float32). Everything downstream derives
its arguments from `pick_device`, so the CPU default and a GPU run take the same
code path and differ only in these few settings.
"""

from __future__ import annotations

from typing import Any, Literal

DevicePref = Literal["auto", "cpu", "cuda"]


def pick_device(pref: DevicePref | str = "auto") -> tuple[str, Any]:
    """Return (device, dtype): ("cuda", torch.bfloat16) when CUDA is usable, else ("cpu", torch.float32).

    `pref="cpu"` forces the CPU; `pref="cuda"` raises when no CUDA device is visible
    (a silent fallback would turn a GPU job into a days-long CPU job).
    """
    import torch

    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device preference {pref!r}; expected auto, cpu or cuda")
    has_cuda = torch.cuda.is_available()
    if pref == "cuda" and not has_cuda:
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    if pref != "cpu" and has_cuda:
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def trainer_device_args(device: str) -> dict[str, Any]:
    """TrainingArguments / TRL config fields for `device`.

    Weights stay float32 on both; CUDA adds bf16 autocast (mixed precision), which
    is what TRL does by default and keeps AdamW updates exact. TRL configs default
    `bf16=True` even on CPU, so it is always set explicitly here.
    """
    if device == "cuda":
        return {"use_cpu": False, "bf16": True, "fp16": False, "dataloader_pin_memory": True}
    if device == "cpu":
        return {"use_cpu": True, "bf16": False, "fp16": False, "dataloader_pin_memory": False}
    raise ValueError(f"unsupported training device {device!r}")


def describe_device(device: str) -> str:
    """A short human-readable name for logs and metrics (e.g. 'cuda:NVIDIA H200' or 'cpu')."""
    if device != "cuda":
        return device
    import torch

    return f"cuda:{torch.cuda.get_device_name(0)}"
