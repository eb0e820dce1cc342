"""Facts about this machine that explain a run's speed: CPU model and vector extensions, cores,
load, the math kernels torch dispatches to, and the thread settings. Printed at the end of
`factory demo`, so a slow run explains itself (two machines of the same kind once differed 2.2x)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# Vector extensions the CPU kernels of torch and polars use when present.
_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon", "asimd")
_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "POLARS_MAX_THREADS")


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if k.strip()}


def _torch_facts() -> dict[str, str]:
    try:
        import torch  # already loaded by the run that calls this; cheap then
    except ImportError:
        return {}
    facts = {"torch": torch.__version__, "torch_threads": str(torch.get_num_threads()),
             "torch_interop_threads": str(torch.get_num_interop_threads())}
    try:
        facts["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        pass
    blas = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    facts["torch_blas"] = blas.group(1) if blas else "?"
    try:
        import numpy as np  # noqa: F401  (loads its BLAS, so threadpoolctl can see it)
        from threadpoolctl import threadpool_info

        facts["numpy_blas"] = ", ".join(
            f"{c.get('internal_api', '?')} {c.get('version') or ''} ({c.get('architecture') or '?'}, {c.get('num_threads')} threads)"
            for c in threadpool_info() if c.get("user_api") == "blas"
        ) or "?"
    except ImportError:  # threadpoolctl is optional
        pass
    return facts


def machine_facts() -> dict[str, str]:
    """name -> value, all strings, in the order they are printed."""
    info = _cpuinfo()
    flags = set(info.get("flags", info.get("Features", "")).split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    facts = {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cores": f"{usable} usable of {os.cpu_count()}",
        "cpu_flags": " ".join(f for f in _FLAGS if f in flags) or "-",
    }
    try:
        facts["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    facts.update(_torch_facts())
    facts.update({k: os.environ[k] for k in _ENV if k in os.environ})
    return facts


def describe_machine() -> str:
    return "\n".join(f"  {k:22s} {v}" for k, v in machine_facts().items())
