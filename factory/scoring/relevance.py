"""Prompt-reply relevance from a causal LM: pointwise mutual information, and the Arbiter's combination.

PMI(reply; prompt) = mean over the reply's tokens of log p(token | prompt, earlier reply tokens)
minus log p(token | a neutral (empty) prompt, earlier reply tokens). A causal LM that was trained on
the dialogs knows which replies follow which prompts, so a fluent reply to *another* prompt gets a
low PMI even where its plain likelihood is high: the feature a tiny reward model fails to learn.

The same reply tokens are scored under both prompts (the chat template's text after the
assistant header: the reply and its end-of-turn token); inputs are cut to `max_length` (the reply
keeps at least half of it; the prompt loses its oldest tokens first) and batched by length.

`Relevance` is what the Arbiter saves next to its weights (`relevance.json` plus the LM in
`relevance_lm/`): feature weights fitted on the Arbiter's train pairs, so the reward is
`w_classifier * classifier score + w_pmi * PMI` (`fit_weights`: a Bradley-Terry logistic regression
without intercept on the chosen-minus-rejected feature differences).
"""

from __future__ import annotations

import json
import shutil
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from factory.generation.base import Message
from factory.ids import weights_digest
from factory.scoring.base import LocalModel

RELEVANCE_FILE = "relevance.json"
RELEVANCE_LM = "relevance_lm"
FEATURES: tuple[str, ...] = ("classifier", "pmi")


class Relevance(BaseModel):
    """How an Arbiter folder turns (classifier score, PMI) into one reward; saved as relevance.json."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["pmi"] = "pmi"
    lm: str = RELEVANCE_LM  # the causal LM folder, relative to the Arbiter folder
    weights: dict[str, float]  # feature name (FEATURES) -> weight
    max_length: int = 256
    fitted_on: dict = {}  # what the weights were fitted on (pairs, accuracy there)

    def save(self, arbiter_dir: Path, lm_dir: Path | None = None) -> None:
        """Write relevance.json into `arbiter_dir`, copying the LM folder's model files there first."""
        arbiter_dir = Path(arbiter_dir)
        if lm_dir is not None:
            target = arbiter_dir / self.lm
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(lm_dir, target, ignore=shutil.ignore_patterns(".*", "build.json"))
        (arbiter_dir / RELEVANCE_FILE).write_text(json.dumps(self.model_dump(), indent=2))

    @classmethod
    def load(cls, arbiter_dir: Path) -> Relevance | None:
        """The folder's combination, or None where it has no relevance.json (a plain reward model)."""
        path = Path(arbiter_dir) / RELEVANCE_FILE
        if not path.exists():
            return None
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path} is not a valid relevance combination: {exc}") from exc

    def combine(self, classifier: list[float], pmi: list[float]) -> list[float]:
        w = self.weights
        return [w["classifier"] * c + w["pmi"] * p for c, p in zip(classifier, pmi, strict=True)]


def fit_weights(diffs: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Bradley-Terry weights: maximise sum log sigmoid(w . d) over rows d = chosen - rejected features
    (no intercept: only differences matter), with a small L2 penalty; Newton's method."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError(f"need a non-empty (pairs, features) array, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("feature differences must be finite")
    w = np.zeros(d.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(d @ w)))
        grad = d.T @ (1.0 - p) - l2 * w
        hess = (d * (p * (1.0 - p))[:, None]).T @ d + l2 * np.eye(d.shape[1])
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.abs(step).max() < 1e-9:
            break
    return w


class PMIScorer(LocalModel):
    """Per-token PMI of each reply with its prompt under a causal LM (fp32 on CPU, bf16 on CUDA).
    The LM is loaded on the first call."""

    def __init__(self, model_path: str | Path, batch_size: int = 32, max_length: int = 256, device: str = "auto"):
        self.model_path = Path(model_path)
        self.batch_size = batch_size
        self.max_length = max_length
        self._device = device
        if max_length < 4:
            raise ValueError(f"max_length must be at least 4 tokens, got {max_length}")

    @cached_property
    def model(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype).to(self.device).eval()

    @cached_property
    def identity(self) -> dict:
        return {"kind": "pmi", "weights": weights_digest(self.model_path), "max_length": self.max_length}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def _split(self, prompt: list[Message], reply: str) -> tuple[list[int], list[int]]:
        """(prompt ids up to the assistant header, reply ids after it) as the chat template renders them."""
        head = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(
            list(prompt) + [{"role": "assistant", "content": reply}], tokenize=False
        )
        if not full.startswith(head):  # a template that re-renders earlier turns: score the reply alone
            return self._ids(head), self._ids(reply)
        return self._ids(head), self._ids(full[len(head) :])

    def _fit(self, head: list[int], reply: list[int]) -> tuple[list[int], list[int]]:
        reply = reply[: self.max_length - min(len(head), self.max_length // 2)]
        return head[-(self.max_length - len(reply)) :] if len(head) + len(reply) > self.max_length else head, reply

    def log_probs(self, prompts: list[list[Message]], replies: list[str]) -> tuple[list[float], list[float]]:
        """(mean log p(reply | prompt), mean log p(reply | empty prompt)) per reply, per token."""
        import torch

        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
        neutral_head = None
        seqs: list[tuple[list[int], int]] = []  # (ids, reply length): conditional ones, then neutral ones
        neutral: list[tuple[list[int], int]] = []
        for prompt, reply in zip(prompts, replies, strict=True):
            head, ids = self._split(prompt, reply)
            if neutral_head is None:
                neutral_head = self._split([{"role": "user", "content": ""}], reply)[0]
            if not ids:
                ids = [self.tokenizer.eos_token_id]
            h, r = self._fit(head, ids)
            seqs.append((h + r, len(r)))
            h, r = self._fit(neutral_head, ids)
            neutral.append((h + r, len(r)))
        seqs += neutral
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        means = [0.0] * len(seqs)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(seqs[i][0]) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
                    mask[row, : len(seqs[i][0])] = 1
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                target = input_ids[:, 1:].to(self.device)
                token_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).cpu()
                for row, i in enumerate(batch):
                    n, k = len(seqs[i][0]), seqs[i][1]
                    means[i] = float(token_lp[row, n - 1 - k : n - 1].mean())
        half = len(prompts)
        return means[:half], means[half:]

    def pmi(self, prompts: list[list[Message]], replies: list[str]) -> list[float]:
        cond, neutral = self.log_probs(prompts, replies)
        return [c - u for c, u in zip(cond, neutral, strict=True)]
