"""The reward-scoring interface (sequence-classifier reward models, LLM judges)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Protocol

from factory.generation.base import Message


class RewardScorer(Protocol):
    name: str

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float | None]:
        """One reward per (prompt, completion); None means the scorer could not score it
        (e.g. an unparseable judge answer after a retry): the caller quarantines it, never scores it 0."""
        ...


class LocalModel:
    """Lazy device, tokenizer and dtype of a model folder scored in this process (`model_path`,
    `_device`: auto, cpu, cuda, cuda:N). bf16 on CUDA, fp32 on CPU; pad falls back to eos."""

    model_path: Path
    _device: str

    @cached_property
    def device(self):
        import torch

        return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if self._device == "auto" else self._device)

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @property
    def dtype(self):
        import torch

        return torch.bfloat16 if self.device.type == "cuda" else torch.float32
