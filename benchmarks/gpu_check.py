"""One-shot GPU check: generation throughput, SFT and DPO step times on a ~100M random Llama.

Run on a CUDA machine:   python benchmarks/gpu_check.py
Smoke-test on a CPU:     python benchmarks/gpu_check.py --allow-cpu --tiny

Prints one JSON object per line (env, model, generate, sft, dpo, done). Nothing
is downloaded: the tokenizer is trained here on synthetic text and the weights
are random, so the numbers measure the machine and the code path, not quality.
On a machine without CUDA it prints a skip line and exits 0 unless --allow-cpu.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Pseudo-words from per-script syllables: enough distinct strings for BPE to fill an
# 8k vocabulary, and several scripts, as in the multilingual pool.
SYLLABLES = {
    "latin": "ka to mi re sa lu ne po di ve ga ro fi ché über ñu".split(),
    "cyrillic": "ка то ми ре са лу не по ди ве жи щу".split(),
    "kana": "か と み れ さ る ね ぽ で べ し ん".split(),
    "arabic": "كا تو مي ري سا لو ني بو دي في".split(),
}


def emit(**record) -> None:
    print(json.dumps(record, ensure_ascii=False, default=str), flush=True)


def sentence(rng: random.Random, n: int) -> str:
    """`n` pseudo-words, each from one script's syllables."""
    words = []
    for _ in range(n):
        syllables = SYLLABLES[rng.choice(sorted(SYLLABLES))]
        words.append("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return " ".join(words)


def build_model(out: Path, tiny: bool, seed: int) -> tuple[Path, int]:
    """Train a tokenizer on synthetic text and save a random Llama (~100M params, or ~0.1M with --tiny)."""
    from transformers import LlamaForCausalLM

    from training.tiny import save_model, tiny_llama_config, train_tokenizer

    rng = random.Random(seed)
    texts = [sentence(rng, 12) for _ in range(4000)]
    tok = train_tokenizer(texts, vocab_size=512 if tiny else 8192, max_length=1024)
    if tiny:
        config = tiny_llama_config(tok, hidden_size=64, layers=2, heads=4, max_positions=1024)
    else:
        config = tiny_llama_config(tok, hidden_size=768, layers=12, heads=12, max_positions=1024)
        config.intermediate_size = 2304  # 12 x (2.4M attention + 5.3M MLP) + embeddings ~= 100M
    model = LlamaForCausalLM(config)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    n_params = sum(p.numel() for p in model.parameters())
    return save_model(model, tok, out / "base"), n_params


def chats(rng: random.Random, n: int, words: int) -> list[list[dict]]:
    return [[{"role": "user", "content": sentence(rng, words)}] for _ in range(n)]


def check_generation(model_dir: Path, device: str, batch: int, new_tokens: int, seed: int) -> dict:
    """Tokens/s through the project's TransformersBackend."""
    from factory.generation.base import SamplingConfig
    from factory.generation.transformers_backend import TransformersBackend

    conversations = chats(random.Random(seed), batch, 16)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, seed=seed)
    backend = TransformersBackend(str(model_dir), batch_size=batch, device=device)
    backend.generate(conversations, sampling, n=1)  # warm-up on the timed shapes (kernel selection)
    _sync(device)
    start = time.perf_counter()
    outs = backend.generate(conversations, sampling, n=1)
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = sum(c.n_tokens for per_prompt in outs for c in per_prompt)
    again = backend.generate(conversations, sampling, n=1)  # same batch, same seed: same samples?
    same = sum(a[0].text == b[0].text for a, b in zip(outs, again, strict=True))
    two = backend.generate(conversations[:8], sampling, n=2)  # n samples per prompt differ from each other?
    return {"backend": "TransformersBackend", "prompts": batch, "new_tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "same_seed_same_text": f"{same}/{len(outs)}",
            "n2_distinct": f"{sum(a.text != b.text for a, b in two)}/{len(two)}"}


def check_plain_generate(model_dir: Path, device: str, batch: int, new_tokens: int, seed: int) -> dict:
    """The same prompts through plain `model.generate` (sampling, same dtype): the side-by-side floor."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    conversations = chats(random.Random(seed), batch, 16)
    _, dtype = _device_dtype(device)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    enc = tok.apply_chat_template(
        conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    ).to(device)
    kwargs = {"max_new_tokens": new_tokens, "do_sample": True, "temperature": 1.0, "top_p": 1.0}
    with torch.no_grad():
        model.generate(**enc, **kwargs)  # warm-up on the timed shapes
        _sync(device)
        start = time.perf_counter()
        out = model.generate(**enc, **kwargs)
        _sync(device)
    seconds = time.perf_counter() - start
    new = out[:, enc["input_ids"].shape[1] :]
    tokens = int((new != tok.pad_token_id).sum())
    return {"backend": "model.generate", "prompts": batch, "new_tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def _device_dtype(device: str):
    from training.device import pick_device

    return pick_device(device)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def step_timer(device: str):
    """A TrainerCallback recording each optimizer step's wall time and the logged token count."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens, self._t = [], None, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            _sync(device)
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            self.times.append(time.perf_counter() - self._t)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                self.tokens = float(logs["num_tokens"])

    return StepTimer()


def timing(timer, metrics: dict, keys: tuple[str, ...] = ()) -> dict:
    if not timer.times:  # --out pointed at a finished run: train_* returned it without training
        return {"steps": metrics["steps"], "reused": True, "note": "use a fresh --out to measure"}
    steady = timer.times[1:] or timer.times  # the first step includes allocator and kernel warm-up
    record = {
        "steps": metrics["steps"],
        "first_step_s": round(timer.times[0], 4),
        "step_s_median": round(statistics.median(steady), 4),
        "train_tokens": timer.tokens,
        "tokens_per_s": round(timer.tokens / sum(timer.times), 1) if timer.tokens else None,
        "first_loss": metrics["first_loss"],
        "final_loss": metrics["final_loss"],
        "device": metrics["device"],
    }
    return record | {k: metrics.get(k) for k in keys}


def check_arbiter(model_dir: Path, rng: random.Random, words: int, steps: int, batch: int) -> dict:
    """The Arbiter's reward-model training (RewardTrainer, bf16 on CUDA) and its held-out scoring."""
    import polars as pl

    from training.reward_model import REWARD_PAIRS, RewardModelConfig, train_reward_model

    def msg(role: str) -> list[dict]:
        return [{"role": role, "content": sentence(rng, words)}]

    n = steps * batch + 64
    rows = [{"prompt": msg("user"), "chosen": msg("assistant"), "rejected": msg("assistant"), "kind": "other_prompt",
             "language": "xx", "split": "heldout" if i < 64 else "train"} for i in range(n)]
    cfg = RewardModelConfig(max_steps=steps, batch_size=batch, max_length=256, torch_threads=None)
    start = time.perf_counter()
    metrics = train_reward_model(model_dir, pl.DataFrame(rows, schema=REWARD_PAIRS), model_dir.parent / "arbiter", cfg)
    return {"seconds_total": round(time.perf_counter() - start, 2)} | {
        k: metrics.get(k) for k in ("steps", "seconds", "train_loss", "accuracy", "n_heldout", "eval_seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU when no CUDA device is present")
    parser.add_argument("--tiny", action="store_true", help="a ~0.1M-parameter model and a few steps")
    parser.add_argument("--steps", type=int, default=None, help="SFT and DPO optimizer steps (default 20, tiny 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="train batch size (default 16, tiny 2)")
    parser.add_argument("--seq-words", type=int, default=None, help="words per prompt and reply (default 60, tiny 6)")
    parser.add_argument("--gen-batch", type=int, default=None, help="prompts per generate call (default 64, tiny 4)")
    parser.add_argument("--more-gen-batches", type=int, nargs="*", default=[], help="also time these generate batch sizes")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per completion (default 128, tiny 8)")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def pick(default: int, tiny: int) -> int:
        return tiny if args.tiny else default

    steps = args.steps or pick(20, 3)
    batch = args.batch_size or pick(16, 2)
    words = args.seq_words or pick(60, 6)
    gen_batch = args.gen_batch or pick(64, 4)
    new_tokens = args.new_tokens or pick(128, 8)

    import torch
    import transformers
    import trl

    has_cuda = torch.cuda.is_available()
    emit(
        check="env",
        torch=torch.__version__,
        transformers=transformers.__version__,
        trl=trl.__version__,
        cuda=has_cuda,
        gpu=torch.cuda.get_device_name(0) if has_cuda else None,
    )
    if not has_cuda and not args.allow_cpu:
        emit(check="skip", reason="no CUDA device visible; pass --allow-cpu (with --tiny) to smoke-test on CPU")
        return 0
    device = "cuda" if has_cuda else "cpu"

    from training.dpo import DPOStageConfig, train_dpo
    from training.sft import SFTStageConfig, train_sft

    work = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model_dir, n_params = build_model(work, args.tiny, args.seed)
    emit(check="model", params=n_params, path=str(model_dir), seconds=round(time.perf_counter() - start, 2))

    for size in sorted({gen_batch, *args.more_gen_batches}):
        emit(check="generate", device=device, **check_generation(model_dir, device, size, new_tokens, args.seed))
        emit(check="generate", device=device, **check_plain_generate(model_dir, device, size, new_tokens, args.seed))

    rng = random.Random(args.seed + 1)
    n_rows = steps * batch
    prompts = chats(rng, n_rows, words)
    sft_rows = [{"prompt": p, "completion": [{"role": "assistant", "content": sentence(rng, words)}]} for p in prompts]
    common = {
        "max_steps": steps,
        "batch_size": batch,
        "max_length": 1024,
        "logging_steps": 1,
        "save_steps": max(steps // 2, 1),
        "device": device,
    }
    timer = step_timer(device)
    sft = train_sft(model_dir, sft_rows, work / "sft", SFTStageConfig(**common), progress=False, callbacks=[timer])
    emit(check="sft", **timing(timer, sft))

    pairs = [
        {
            "prompt": r["prompt"],
            "chosen": r["completion"],
            "rejected": [{"role": "assistant", "content": sentence(rng, words)}],
        }
        for r in sft_rows
    ]
    timer = step_timer(device)
    dpo = train_dpo(work / "sft", pairs, work / "dpo", DPOStageConfig(**common), progress=False, callbacks=[timer])
    emit(check="dpo", **timing(timer, dpo, ("rewards/accuracies", "rewards/margins")))

    emit(check="arbiter", **check_arbiter(model_dir, rng, words, steps, batch))

    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if has_cuda else None
    emit(check="done", ok=True, seconds=round(time.perf_counter() - start, 1), peak_gpu_gib=peak, work=str(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
