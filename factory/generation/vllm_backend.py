"""Generation with vLLM's in-process engine (`vllm.LLM.chat`), for served-size teachers on GPUs.

`vllm` is imported in the constructor only, so this module imports on machines
without it (and without a GPU); constructing the backend there raises a clear
error. Untested here: this project's CI has no GPU.
"""

from __future__ import annotations

import time

from factory.generation.base import Completion, Message, SamplingConfig

INSTALL_HINT = "the vllm backend needs the `vllm` package: pip install '.[gpu]' (on a machine with a CUDA GPU)"


class VLLMBackend:
    """`generate()` over `vllm.LLM(model=...)`: n samples per conversation in one `llm.chat` call."""

    def __init__(
        self,
        model: str,
        name: str = "",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
    ):
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        self._vllm = vllm
        self.name = name or model
        self.llm = vllm.LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
        )

    def generate(
        self, conversations: list[list[Message]], sampling: SamplingConfig, n: int = 1
    ) -> list[list[Completion]]:
        """`n` completions per conversation; the engine batches and schedules internally."""
        params = self._vllm.SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
        )
        start = time.perf_counter()
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        per = (time.perf_counter() - start) / max(1, len(conversations) * n)
        return [
            [Completion(o.text, len(o.token_ids), o.finish_reason or "length", per) for o in request.outputs]
            for request in outputs
        ]
