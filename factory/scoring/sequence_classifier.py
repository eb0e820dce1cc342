"""Reward from any `AutoModelForSequenceClassification` reward model (the Arbiter, or a real RM).

(prompt, completion) is rendered with the tokenizer's chat template, tokenised
without truncation (so truncation can be recorded), cut to `max_length`
(right side) and scored in batches. Batches are built from length-sorted inputs
so each batch pads little; rewards come back in the caller's order.

A model folder holding a `relevance.json` (the embedded Arbiter with `relevance: pmi`) scores
with its saved combination: the classifier's score plus a weighted prompt-reply PMI from the
causal LM saved beside it (factory.scoring.relevance), the same reward its held-out accuracy was
measured on.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from factory.generation.base import Message
from factory.ids import weights_digest
from factory.scoring.base import LocalModel
from factory.scoring.relevance import PMIScorer, Relevance


class SequenceClassifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str  # a local model folder (e.g. the trained Arbiter)
    name: str | None = None  # scorer name in the scores table; default "rm:<folder name>"
    batch_size: int = 32
    max_length: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    sort_by_length: bool = True

    def build(self) -> SequenceClassifierScorer:
        return SequenceClassifierScorer(**self.model_dump())


class SequenceClassifierScorer(LocalModel):
    """RewardScorer over a sequence-classification reward model (num_labels=1); bf16 on CUDA, fp32 on CPU.

    The weights are loaded on the first score call, so a scorer whose rewards are all cached
    (or computed on a Ray cluster, factory.engines.ray_data) never loads them in this process."""

    def __init__(
        self,
        model_path: str | Path,
        batch_size: int = 32,
        max_length: int = 256,
        device: str = "auto",
        sort_by_length: bool = True,
        name: str | None = None,
    ) -> None:
        from transformers import AutoConfig

        self.model_path = Path(model_path)
        self.name = name or f"rm:{self.model_path.name}"
        self.batch_size = batch_size
        self.max_length = max_length
        self.sort_by_length = sort_by_length
        self._device = device
        num_labels = AutoConfig.from_pretrained(self.model_path).num_labels
        if num_labels != 1:
            raise ValueError(f"{self.model_path} has num_labels={num_labels}; a reward model needs 1")
        self.relevance = Relevance.load(self.model_path)
        self.pmi_scorer = (
            None if self.relevance is None else
            PMIScorer(self.model_path / self.relevance.lm, batch_size, self.relevance.max_length, device)
        )  # fmt: skip

    def config(self) -> SequenceClassifierConfig:
        """What rebuilds this scorer elsewhere (a Ray worker)."""
        return SequenceClassifierConfig(
            model_path=str(self.model_path), name=self.name, batch_size=self.batch_size, max_length=self.max_length,
            device=self._device, sort_by_length=self.sort_by_length,
        )  # fmt: skip

    @cached_property
    def model(self):
        from transformers import AutoModelForSequenceClassification

        dtype = self.dtype
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path, dtype=dtype)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model.to(self.device).eval()

    @cached_property
    def identity(self) -> dict:
        """What decides the rewards (the score cache's key): the checkpoint's content hash and max_length."""
        identity = {
            "kind": "sequence_classifier",
            "weights": weights_digest(self.model_path),
            "max_length": self.max_length,
        }
        if self.relevance is not None:
            identity["relevance"] = {**self.relevance.model_dump(exclude={"fitted_on"}), "lm": self.pmi_scorer.identity}
        return identity

    def encode(self, prompts: list[list[Message]], completions: list[str]) -> list[list[int]]:
        """Token ids of each chat-formatted (prompt, completion), untruncated."""
        texts = self.tokenizer.apply_chat_template(
            [list(p) + [{"role": "assistant", "content": c}] for p, c in zip(prompts, completions, strict=True)],
            tokenize=False,
        )
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def score_with_info(self, prompts: list[list[Message]], completions: list[str]) -> tuple[list[float], list[bool]]:
        """(rewards, truncated): one reward per pair (with the folder's relevance combination when it
        has one), and whether its classifier input was cut to max_length."""
        features, truncated = self.features(prompts, completions)
        if self.relevance is None:
            return features["classifier"], truncated
        return self.relevance.combine(features["classifier"], features["pmi"]), truncated

    def features(self, prompts: list[list[Message]], completions: list[str]) -> tuple[dict[str, list[float]], list[bool]]:
        """({"classifier": scores, and "pmi" where the folder has a relevance combination}, truncated)."""
        rewards, truncated = self.classifier_scores(prompts, completions)
        features = {"classifier": rewards}
        if self.pmi_scorer is not None:
            features["pmi"] = self.pmi_scorer.pmi(prompts, completions)
        return features, truncated

    def classifier_scores(self, prompts: list[list[Message]], completions: list[str]) -> tuple[list[float], list[bool]]:
        """(the classifier head's scores, truncated), without any relevance combination."""
        import torch

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return [], []
        ids = self.encode(prompts, completions)
        truncated = [len(x) > self.max_length for x in ids]
        ids = [x[: self.max_length] for x in ids]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i])) if self.sort_by_length else list(range(len(ids)))
        rewards: list[float] = [0.0] * len(ids)
        pad = self.model.config.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for i, value in zip(batch, logits[:, 0].float().cpu().tolist(), strict=True):
                    rewards[i] = value
        return rewards, truncated

    def score(self, prompts: list[list[Message]], completions: list[str]) -> list[float | None]:
        return list(self.score_with_info(prompts, completions)[0])
