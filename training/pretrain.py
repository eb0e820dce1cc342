"""A small causal-LM training loop on chat-formatted dialogs (user prompt -> assistant reply).

Used to build the embedded teacher pool (training/teachers.py). Plain PyTorch:
at this size the HF Trainer's setup costs more than the training itself.
The loss covers every non-padding token, so a model also learns the prompt's
language, which is what makes a cluster teacher strong on its languages.
Batches are drawn from length-sorted neighbours (ties shuffled), so little
compute goes to padding; on 2 CPU cores that is a 2-3x speed-up.
"""

from __future__ import annotations

import math
import time

Conversation = list[dict[str, str]]


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encode_conversations(tokenizer, conversations: list[Conversation], max_length: int) -> list[list[int]]:
    """Token ids of each conversation rendered with the chat template, truncated to `max_length`."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    return [ids for ids in enc["input_ids"] if len(ids) > 1]


def _collate(batch: list[list[int]], pad_id: int, device: str):
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return input_ids.to(device), mask.to(device), labels.to(device)


def train_causal_lm(
    model,
    tokenizer,
    conversations: list[Conversation],
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    max_length: int = 128,
    desc: str = "train",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Train `model` in place for `steps` AdamW steps on random batches of `conversations`.

    Learning rate: linear warm-up over the first 10% of steps, then cosine decay to 10%.
    Returns metrics: steps, final_loss (mean of the last 10% of steps), first_loss,
    seconds, n_params, n_examples, tokens_seen, device.
    """
    import torch
    from tqdm.auto import tqdm

    examples = encode_conversations(tokenizer, conversations, max_length)
    if not examples:
        raise ValueError(f"{desc}: no trainable conversations")
    shuffled = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    examples = sorted((examples[i] for i in shuffled), key=len)
    size = min(batch_size, len(examples))
    device = resolve_device(device)
    model.to(device)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=None if progress else True, leave=False)  # None: off when not a terminal
    for _ in bar:
        first = int(torch.randint(len(examples) - size + 1, (1,), generator=gen))
        input_ids, mask, labels = _collate(examples[first : first + size], tokenizer.pad_token_id, device)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += int(mask.sum())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    tail = losses[-max(1, steps // 10) :] if losses else [float("nan")]
    return {
        "steps": steps,
        "first_loss": losses[0] if losses else float("nan"),
        "final_loss": sum(tail) / len(tail),
        "seconds": round(time.perf_counter() - start, 3),
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_examples": len(examples),
        "tokens_seen": tokens,
        "device": device,
    }


def mean_token_loss(
    model, tokenizer, conversations: list[Conversation], max_length: int = 128, batch_size: int = 32
) -> float:
    """Mean per-token cross-entropy of `model` on `conversations` (exp() of it is the perplexity)."""
    import torch

    examples = encode_conversations(tokenizer, conversations, max_length)
    if not examples:
        return float("nan")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            input_ids, mask, labels = _collate(examples[i : i + batch_size], tokenizer.pad_token_id, str(device))
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(nll)
            count += int((target != -100).sum())
    return total / max(1, count)
