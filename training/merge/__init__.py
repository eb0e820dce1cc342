"""Model merging, mergekit-style, streamed tensor by tensor over safetensors checkpoints.

Methods (registered by name): linear, slerp, ties, dare_ties, dare_linear.
Entry points: `merge_models` (for the merged_model asset) and `merge_from_yaml` (mergekit-style YAML).
"""

from training.merge import dare, linear, slerp, ties  # noqa: F401  (registers the methods)
from training.merge.config import (
    MergeConfig,
    MergeParameters,
    MergeSettings,
    ModelEntry,
    ModelParameters,
    load_merge_config,
)
from training.merge.registry import METHODS, MergeMethod, get_method, method_names
from training.merge.run import merge_from_yaml, merge_models, run_merge

__all__ = [
    "METHODS",
    "MergeConfig",
    "MergeMethod",
    "MergeParameters",
    "MergeSettings",
    "ModelEntry",
    "ModelParameters",
    "get_method",
    "load_merge_config",
    "merge_from_yaml",
    "merge_models",
    "method_names",
    "run_merge",
]
