"""Generation with a local transformers causal LM: batched, left-padded, KV-cached.

The default backend of the embedded pool and of the online DPO rounds. Sampling
is reproducible per call: the torch RNG is seeded with `sampling.seed` before
each batch, so the same batch with the same seed gives the same completions
(a different batch composition may give different samples for a prompt).
Conversations are batched in order of prompt length, so little goes to padding.

Sampling (temperature, top-p) happens in `LiveRowSampler`, a logits processor
that draws the next token only for rows still generating and hands `generate()`
a one-hot score to decode greedily. Why: HF's top-p warper sorts the whole
vocabulary of every row at every step, finished rows included; for a small model
on CPU that sort, not the model, was most of a batched step. The nucleus is
looked for in the top-1024 tokens first (a full sort only for rows whose nucleus
is wider), which gives the same distribution as sorting everything.
"""

from __future__ import annotations

import time
from pathlib import Path

from factory.generation.base import Completion, Message, SamplingConfig

CANDIDATES = 1024  # top-k searched for the nucleus first; a top-k is ~2.5x cheaper than a full sort on CPU


def _draw_from_sorted(vals, idx, top_p: float):
    """One token per row from descending-sorted probabilities `vals` (token ids `idx`), within the top-p nucleus."""
    import torch

    keep = (vals.cumsum(-1) - vals) < top_p  # the smallest top set whose mass reaches top_p
    return idx.gather(-1, torch.multinomial(vals * keep, 1)).squeeze(-1)


class LiveRowSampler:
    """Temperature + top-p sampling for unfinished rows only; returns one-hot scores for greedy decoding."""

    def __init__(self, temperature: float, top_p: float, prompt_width: int, eos_token_id: int):
        self.temperature = temperature
        self.top_p = top_p
        self.prompt_width = prompt_width
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids, scores):
        import torch

        live = ~(input_ids[:, self.prompt_width :] == self.eos_token_id).any(dim=-1)
        tokens = torch.full((scores.shape[0],), self.eos_token_id, dtype=torch.long, device=scores.device)
        if live.any():
            probs = torch.softmax(scores[live].float() / self.temperature, dim=-1)
            vals, idx = probs.topk(min(CANDIDATES, probs.shape[-1]), dim=-1)  # sorted, descending
            drawn = _draw_from_sorted(vals, idx, self.top_p)
            wide = vals.sum(-1) < self.top_p  # nucleus larger than the candidates: sort the whole row
            if wide.any():
                drawn[wide] = _draw_from_sorted(*probs[wide].sort(dim=-1, descending=True), self.top_p)
            tokens[live] = drawn
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), tokens] = 0.0
        return out


class TransformersBackend:
    """`generate()` over `AutoModelForCausalLM` + `AutoTokenizer` loaded from `model_path`."""

    def __init__(self, model_path: str | Path, name: str = "", device: str = "auto", batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.name = name or str(model_path)
        self.device = device
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the end of a long prompt, next to the answer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()

    def _prompt_budget(self, max_new_tokens: int) -> int | None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        return max(1, limit - max_new_tokens) if limit else None

    def _generate_batch(self, texts: list[str], sampling: SamplingConfig, n: int) -> list[list[Completion]]:
        import torch

        budget = self._prompt_budget(sampling.max_new_tokens)
        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False,
            truncation=budget is not None, max_length=budget,
        ).to(self.device)  # fmt: skip
        from transformers import LogitsProcessorList

        greedy = sampling.temperature <= 0
        processors = LogitsProcessorList()
        if not greedy:
            if n > 1:  # each prompt n times in a row: [p0, p0, p1, p1, ...]
                enc = {key: value.repeat_interleave(n, dim=0) for key, value in enc.items()}
            width = enc["input_ids"].shape[1]
            processors.append(LiveRowSampler(sampling.temperature, sampling.top_p, width, self.tokenizer.eos_token_id))
        torch.manual_seed(sampling.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=False,  # LiveRowSampler has drawn the token when sampling
                logits_processor=processors,
                use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        elapsed = time.perf_counter() - start
        generated = out[:, enc["input_ids"].shape[1] :].tolist()
        per = elapsed / max(1, len(texts) * n)
        eos = self.tokenizer.eos_token_id
        completions = []
        for tokens in generated:
            stop = eos in tokens
            kept = tokens[: tokens.index(eos)] if stop else tokens
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            completions.append(Completion(text, len(kept) + int(stop), "stop" if stop else "length", per))
        if greedy:  # one greedy answer stands for all n identical samples
            return [[Completion(c.text, c.n_tokens, c.finish_reason, per) for _ in range(n)] for c in completions]
        return [completions[i * n : (i + 1) * n] for i in range(len(texts))]

    def generate(
        self, conversations: list[list[Message]], sampling: SamplingConfig, n: int = 1
    ) -> list[list[Completion]]:
        """`n` completions per conversation, in `batch_size` chunks of similar-length conversations."""
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
        ]
        order = sorted(range(len(conversations)), key=lambda i: len(texts[i]))
        results: list[list[Completion] | None] = [None] * len(conversations)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, completions in zip(chunk, self._generate_batch([texts[i] for i in chunk], sampling, n), strict=True):
                results[i] = completions
        return results  # type: ignore[return-value]
