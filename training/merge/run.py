"""Run a merge: validate inputs, stream every tensor through a registered method, write a HF model folder.

The output folder is written under a temporary sibling name and renamed when complete,
so a crash never leaves a half-written model where a loader would find it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from training.merge.compat import (
    TOKENIZER_FILES,
    check_same_tensors,
    check_same_tying,
    check_same_vocabulary,
    drop_tied_head,
)
from training.merge.config import (
    MergeConfig,
    MergeParameters,
    MergeSettings,
    format_validation_error,
    load_merge_config,
)
from training.merge.registry import MergeMethod, get_method
from training.merge.streaming import (
    FLOAT_CODES,
    CheckpointReader,
    StreamingCheckpointWriter,
    TensorInfo,
    byte_buffer,
    parse_size,
    st_code,
    torch_dtype,
)

MODEL_FILES = ("config.json", "generation_config.json")
_PARAM_KEYS = {"t": "t", "normalize": "normalize", "rescale": "rescale", "lambda_": "lambda_"}


def merge_from_yaml(config_path: str | Path, out_dir: str | Path) -> dict:
    """Merge as described by a mergekit-style YAML into `out_dir`; relative model paths resolve against the YAML's folder."""
    config = load_merge_config(config_path)
    return run_merge(config, out_dir, relative_to=Path(config_path).parent, config_file=Path(config_path))


def merge_models(
    models: list[str | Path],
    method: str,
    out_dir: str | Path,
    weights: list[float] | None = None,
    base: str | Path | None = None,
    densities: list[float] | None = None,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    seed: int = 0,
    tokenizer_source: str | None = None,
    threads: int | None = 1,
    **params,
) -> dict:
    """Merge model folders with `method` (params: t, normalize, rescale, lambda); returns the merge info."""
    from pydantic import ValidationError

    if weights is not None and len(weights) != len(models):
        raise ValueError(f"got {len(models)} models but {len(weights)} weights")
    if densities is not None and len(densities) != len(models):
        raise ValueError(f"got {len(models)} models but {len(densities)} densities")
    entries = [
        {
            "model": str(m),
            "parameters": {
                "weight": None if weights is None else weights[i],
                "density": None if densities is None else densities[i],
            },
        }
        for i, m in enumerate(models)
    ]
    raw = {
        "merge_method": method,
        "base_model": None if base is None else str(base),
        "models": entries,
        "parameters": {("lambda" if k == "lambda_" else k): v for k, v in params.items()},
        "dtype": dtype,
        "max_shard_size": max_shard_size,
        "seed": seed,
        "tokenizer_source": tokenizer_source,
        "threads": threads,
    }
    try:
        config = MergeConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(format_validation_error(e)) from None
    return run_merge(config, out_dir)


def merge_with_settings(
    settings: MergeSettings, models: dict[str, str | Path], out_dir: str | Path, base: str | Path | None = None
) -> dict:
    """Merge named models (e.g. cluster name -> folder) as the run config's `merge` section says.

    `base` is used only by the methods that need one (`get_method(settings.method).needs_base`),
    and those refuse to run without it.
    """
    method = get_method(settings.method)
    if method.needs_base and base is None:
        raise ValueError(f"merge method {method.name!r} needs a base model")
    names = list(models)
    return merge_models(
        [models[name] for name in names],
        method.name,
        out_dir,
        weights=[settings.weights.get(name, 1.0) for name in names],
        base=base if method.needs_base else None,
        densities=[settings.density] * len(names) if method.uses_densities else None,
        seed=settings.seed,
        **({"t": settings.t} if "t" in method.params else {}),
    )


def run_merge(config: MergeConfig, out_dir: str | Path, relative_to: Path | None = None, config_file: Path | None = None) -> dict:
    """Execute a validated merge config; returns {method, inputs, base, n_tensors, seconds, output, ...}."""
    start = time.perf_counter()
    method = get_method(config.merge_method)
    resolve = _resolver(relative_to)
    base = resolve(config.base_model) if config.base_model else None
    members, weights, densities = _members(config, method, base, resolve)
    _warn_unused(config.parameters, method)
    folders = list(dict.fromkeys(([base] if base else []) + members))
    source = base or members[0]
    tok_source = _tokenizer_source(config.tokenizer_source, base, source, resolve)
    check_same_vocabulary(folders + ([tok_source] if tok_source not in folders else []))
    tied = check_same_tying(folders)

    out = Path(out_dir).resolve()  # `..`, `.` and links named: the folder they are, not a name
    check_output_folder(out, [*folders, tok_source, *([config_file] if config_file else [])])
    readers = {str(f): CheckpointReader(f) for f in folders}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = None
    try:
        # Tied inputs give a tied output: no lm_head.weight is written, config.json (copied) says tied.
        dropped_head = drop_tied_head(readers) if tied else []
        check_same_tensors(readers)
        ref = readers[str(source)]
        out_infos = [_output_info(ref.infos[n], config.dtype) for n in ref.names()]
        writer = StreamingCheckpointWriter(tmp, out_infos, parse_size(config.max_shard_size))
        kwargs = _method_kwargs(method, config.parameters, weights, densities)
        inputs = [readers[str(m)] for m in members]
        base_reader = readers[str(base)] if "base" in method.params else None
        # One reusable buffer per input, as large as the largest tensor: read_into fills them
        # and in-place methods merge into the first, so no tensor's memory is faulted in anew.
        largest = max(reader.largest_nbytes for reader in readers.values())
        buffers = [byte_buffer(largest) for _ in inputs]
        base_buffer = byte_buffer(largest) if base_reader is not None else None
        with torch_threads(config.threads):
            for info in out_infos:
                merged = _merge_tensor(info, method, kwargs, inputs, buffers, base_reader, base_buffer, config.seed)
                writer.write(info.name, merged)
                del merged
        writer.close()
        _copy_model_files(source, tok_source, tmp, config.dtype)
        _write_merge_config(config, base, members, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for reader in readers.values():
            reader.close()
    return {
        "method": method.name,
        "inputs": [str(m) for m in members],
        "base": str(base) if base else None,
        "weights": weights,
        "densities": densities if "densities" in method.params else None,
        "n_tensors": len(out_infos),
        "n_shards": len(writer.shards),
        "bytes": sum(i.nbytes for i in out_infos),
        "dtype": config.dtype,
        "tied_embeddings": tied,
        "dropped_tied_head": dropped_head,
        "seconds": round(time.perf_counter() - start, 3),
        "output": str(out),
    }


def _merge_tensor(
    info: TensorInfo, method: MergeMethod, kwargs: dict, inputs, buffers, base_reader, base_buffer, seed: int
):
    """Read one tensor from every input into its buffer and merge them (in place where the method can)."""
    name = info.name
    tensors = [reader.read_into(name, buf) for reader, buf in zip(inputs, buffers, strict=True)]
    if inputs[0].infos[name].dtype not in FLOAT_CODES:  # integer buffers are copied, not merged
        return tensors[0]
    call = dict(kwargs)
    if base_reader is not None:
        call["base"] = base_reader.read_into(name, base_buffer)
    if "generator" in method.params:
        call["generator"] = _generator(seed, name)
    return method.fn(tensors, **call).to(torch_dtype(info.dtype))


@contextmanager
def torch_threads(n: int | None):
    """Run with `n` torch intra-op threads (None: leave as is), restoring the previous setting."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _resolver(relative_to: Path | None):
    def resolve(path: str) -> Path:
        p = Path(path).expanduser()
        if not p.is_absolute() and relative_to is not None and (relative_to / p).exists():
            p = relative_to / p
        if not p.is_dir():
            raise FileNotFoundError(f"model folder not found: {path} (only local folders can be merged)")
        return p.resolve()

    return resolve


def _members(config: MergeConfig, method: MergeMethod, base: Path | None, resolve):
    """The merged models in order, with their weights and densities (top-level values as defaults)."""
    top = config.parameters
    rows = [(resolve(e.model), e.parameters) for e in config.models]
    if method.needs_base:  # the base's task vector is zero: leave it out, as mergekit does
        rows = [r for r in rows if r[0] != base]
        if not rows:
            raise ValueError("no models to merge besides base_model")
    elif method.name == "slerp" and base is not None:  # base first: t=0 is the base model
        rows = [r for r in rows if r[0] == base] or [(base, top)]
        rows += [(resolve(e.model), e.parameters) for e in config.models if resolve(e.model) != base]
    members = [r[0] for r in rows]
    if len(set(members)) != len(members):
        raise ValueError(f"a model is listed twice: {[str(m) for m in members]}")
    weights = [_pick(p.weight, top.weight, 1.0) for _, p in rows]
    densities = [_pick(p.density, top.density, 1.0) for _, p in rows]
    return members, weights, densities


def _pick(*values):
    return next(v for v in values if v is not None)


def _warn_unused(params: MergeParameters, method: MergeMethod) -> None:
    if params.int8_mask is not None:
        warnings.warn("int8_mask is ignored: consensus masks are always boolean here", stacklevel=3)
    for key, name in _PARAM_KEYS.items():
        if getattr(params, key) is not None and name not in method.params:
            warnings.warn(f"parameter {key!r} is not used by merge_method {method.name!r}", stacklevel=3)


def _method_kwargs(method: MergeMethod, params: MergeParameters, weights, densities) -> dict:
    kwargs = {k: v for k, v in method.defaults.items() if k in method.params}
    for key, name in _PARAM_KEYS.items():
        value = getattr(params, key)
        if value is not None and name in method.params:
            kwargs[name] = value
    if "weights" in method.params:
        kwargs["weights"] = weights
    if "densities" in method.params:
        kwargs["densities"] = densities
    if "inplace" in method.params:  # the runner owns the tensors it read: methods may reuse them
        kwargs["inplace"] = True
    return kwargs


def _generator(seed: int, name: str):
    import torch

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _output_info(info: TensorInfo, dtype: str | None) -> TensorInfo:
    if dtype is None or info.dtype not in FLOAT_CODES:
        return info
    return TensorInfo(info.name, info.shape, st_code(dtype))


def _tokenizer_source(value: str | None, base: Path | None, source: Path, resolve) -> Path:
    if value is None:
        return source
    if value == "base":
        return base
    return resolve(value)


def _copy_model_files(source: Path, tok_source: Path, dest: Path, dtype: str | None) -> None:
    for name in MODEL_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    for name in TOKENIZER_FILES:
        if (tok_source / name).exists():
            shutil.copy2(tok_source / name, dest / name)
    cfg_path = dest / "config.json"
    if dtype is not None and cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        cfg["dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"] = dtype
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


MERGE_RECORD = "merge_config.yaml"  # written into every merged folder: what may be replaced by a new merge


def check_output_folder(out: Path, inputs: list[Path]) -> None:
    """Refuse an output folder whose replacement would destroy something: an input (a model, the
    merge config) or a folder holding one, the current folder or one holding it, a file, or an
    existing folder that is not empty and not an earlier merge's output (merge_config.yaml and
    config.json in it). An earlier merge's output is replaced whole."""
    out = out.resolve()
    for item in inputs:
        src = Path(item).resolve()
        if src == out or out in src.parents:
            raise ValueError(f"the output folder {out} {'is' if src == out else 'holds'} {src}, an input of this merge: choose another folder")
    if Path.cwd().resolve() == out or out in Path.cwd().resolve().parents:
        raise ValueError(f"the output folder {out} holds the current folder: choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not ((out / MERGE_RECORD).is_file() and (out / "config.json").is_file()):
        raise ValueError(f"the output folder {out} exists and is not an earlier merge's output (no {MERGE_RECORD} and "
                         "config.json); a merge replaces its output folder whole: choose a new or empty folder")


def _write_merge_config(config: MergeConfig, base: Path | None, members: list[Path], dest: Path) -> None:
    import yaml

    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["resolved"] = {"base_model": str(base) if base else None, "merged": [str(m) for m in members]}
    (dest / MERGE_RECORD).write_text(yaml.safe_dump(data, sort_keys=False))
