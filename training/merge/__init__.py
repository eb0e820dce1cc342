"""Model merging, mergekit-style, streamed tensor by tensor over safetensors checkpoints.

Methods (training/merge/registry.py): linear, slerp, and the generalized task-arithmetic
family ties, dare_ties, dare_linear (training/merge/task_arithmetic.py).
Entry points: `merge_with_settings` (the merged_model asset), `merge_models` and
`merge_from_yaml` (a mergekit-style YAML; `factory merge`).

Importing this package does not import torch: the methods import it when they run.
"""

from training.merge.config import (
    MergeCandidate,
    MergeConfig,
    MergeParameters,
    MergeSettings,
    MethodName,
    ModelEntry,
    ModelParameters,
    load_merge_config,
)
from training.merge.registry import METHOD_NAMES, METHODS, MergeMethod, get_method, method_names
from training.merge.run import merge_from_yaml, merge_models, merge_with_settings, run_merge

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "MergeCandidate",
    "MergeConfig",
    "MergeMethod",
    "MergeParameters",
    "MergeSettings",
    "MethodName",
    "ModelEntry",
    "ModelParameters",
    "get_method",
    "load_merge_config",
    "merge_from_yaml",
    "merge_models",
    "merge_with_settings",
    "method_names",
    "run_merge",
]
