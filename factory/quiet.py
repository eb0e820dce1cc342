"""Keep the console readable during long runs: one progress bar per stage, not library chatter."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries(offline: bool = True) -> None:
    """Silence library banners, per-file progress bars and deprecation chatter (errors still show).
    `offline` (the default path never downloads) sets HF_HUB_OFFLINE unless the environment has
    it; huggingface_hub reads it once, at import (here, through transformers), so a process that
    pushes to the hub passes False before anything imports it."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("transformers", "datasets", "trl", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
