"""Crash-safe training runs shared by the SFT, DPO and reward-model stages, and their common skeleton.

Layout next to the final model folder `out/`:

- `out.work/`  Trainer checkpoints (`checkpoint-N/`) and `run.json` holding the
  run's fingerprint (config + inputs). A rerun with the same fingerprint resumes
  from the newest complete checkpoint; a different fingerprint wipes it.
- `out.tmp/`   the final model, tokenizer and `metrics.json` being written.
- `out/`       appears only by renaming a complete `out.tmp/`, so a crash never
  leaves a half-written model. Its `metrics.json` carries the fingerprint, so a
  rerun after success returns at once.

A finished run is reused only if its files are still what was committed:
`outputs.json`, written last into `out.tmp/`, records every output file's size
and a cheap hash (blake2b of the size and the first and last MiB, so checking a
multi-GB checkpoint reads 2 MiB). Before reuse the sizes and hashes are checked
and every `*.safetensors` must be structurally whole (header, then exactly the
bytes its tensors need); a file that was truncated, changed or removed after the
run finished makes the stage train again, with one log line saying why. Damage
confined to the middle of a large file is caught only by the structural check.
A folder from before `outputs.json` existed gets the structural check alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from training.device import DevicePref, describe_device, pick_device, trainer_device_args

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
OUTPUTS_FILE = "outputs.json"
_HASH_SPAN = 1 << 20  # bytes hashed at each end of a file


class TrainLoopConfig(BaseModel):
    """Settings every training stage shares (optimiser schedule, checkpoints, device)."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(-1, description="optimizer steps; -1 trains for `epochs` instead")
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    lr_scheduler: str = "linear"
    warmup: float = Field(0.0, description="warmup steps; a value below 1 is a fraction of all steps")
    max_length: int = 256
    seed: int = 0
    logging_steps: int = 5
    save_steps: int = Field(50, description="a resumable Trainer checkpoint every N steps")
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    device: DevicePref = "auto"
    keep_work_dir: bool = Field(False, description="keep Trainer checkpoints after a successful run")


def trainer_loop_args(cfg: TrainLoopConfig, work_dir: Path, progress: bool) -> dict[str, Any]:
    """The TrainingArguments fields derived from `cfg` (TRL-config agnostic)."""
    return {
        "output_dir": str(work_dir),
        "max_steps": cfg.max_steps,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.lr,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "logging_strategy": "steps",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "disable_tqdm": not (progress and sys.stderr.isatty()),  # no carriage-return bars in logs
        "report_to": "none",
        "dataloader_num_workers": 0,
    }


def checkpointing_arg(args_cls: type, on: bool) -> dict[str, bool]:
    """Activation (gradient) checkpointing under the name `args_cls` takes. transformers renamed
    `gradient_checkpointing` to `activation_checkpointing` (5.2x; the old name is a deprecated alias
    there), and an older release refuses the new name: found running the GPU check on transformers 5.17."""
    names = {f.name for f in dataclasses.fields(args_cls)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def _dir_identity(path: str | Path | None) -> Any:
    """Cheap identity of a model folder: resolved path plus each file's size and mtime (no hashing of weights)."""
    if path is None:
        return None
    root = Path(path).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [str(root)] + [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def fingerprint(stage: str, cfg: BaseModel, model_dirs: list[str | Path | None], rows: list[dict]) -> str:
    """A hash of everything that determines the trained weights: stage, config, input models and rows."""
    payload = {
        "stage": stage,
        "config": cfg.model_dump(mode="json", exclude={"keep_work_dir"}),
        "models": [_dir_identity(d) for d in model_dirs],
        "rows": rows,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _complete_checkpoint(path: Path) -> bool:
    """Trainer writes trainer_state.json last, so a parseable one marks a finished checkpoint."""
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return (path / "optimizer.pt").exists() and any(path.glob("*.safetensors"))


def quick_hash(path: Path) -> str:
    """blake2b of a file's size and its first and last MiB (the whole file when it is under 2 MiB)."""
    size = path.stat().st_size
    h = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(_HASH_SPAN))
        if size > 2 * _HASH_SPAN:
            f.seek(size - _HASH_SPAN)
        h.update(f.read(_HASH_SPAN))
    return h.hexdigest()


def output_manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {size, hash}} for every file under `folder` except the manifest itself."""
    return {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "blake2b": quick_hash(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != OUTPUTS_FILE
    }


def safetensors_damage(path: Path) -> str | None:
    """Why a .safetensors file is not whole (truncated, padded, unreadable header), or None.
    The format is an 8-byte header length, a JSON header, then the tensors' bytes up to the
    largest `data_offsets` end, so the file size is fully determined by its header."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                return f"{path.name} is {size} bytes, shorter than its header says"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        return f"{path.name} has an unreadable header ({exc})"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return f"{path.name} is {size} bytes, its tensors need {expected}"
    return None


def output_damage(folder: Path) -> str | None:
    """Why `folder` no longer holds the outputs that were committed into it, or None when it does."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no *.safetensors in it"
    for p in weights:
        if (why := safetensors_damage(p)) is not None:
            return why
    try:
        recorded = json.loads((folder / OUTPUTS_FILE).read_text())
    except FileNotFoundError:
        return None  # committed before outputs.json existed: the structural check above is all there is
    except (OSError, ValueError) as exc:
        return f"{OUTPUTS_FILE} is unreadable ({exc})"
    for name, want in recorded.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if (size := p.stat().st_size) != want["size"]:
            return f"{name} is {size} bytes, {want['size']} when the run finished"
        if quick_hash(p) != want["blake2b"]:
            return f"{name} changed since the run finished (hash mismatch)"
    return None


@dataclass
class StageRun:
    """The folders of one training run and the operations that keep them consistent."""

    out_dir: Path
    fingerprint: str
    keep_work_dir: bool = False

    @property
    def work_dir(self) -> Path:
        return self.out_dir.parent / f"{self.out_dir.name}.work"

    @property
    def tmp_dir(self) -> Path:
        return self.out_dir.parent / f"{self.out_dir.name}.tmp"

    def finished(self) -> dict | None:
        """The metrics of a completed run with this fingerprint, or None."""
        try:
            metrics = json.loads((self.out_dir / METRICS_FILE).read_text())
        except (OSError, ValueError):
            return None
        if metrics.get("config_hash") != self.fingerprint:
            return None
        if (why := output_damage(self.out_dir)) is not None:
            logger.warning("training again: the finished run in %s cannot be reused: %s", self.out_dir, why)
            return None
        return {**metrics, "reused": True}

    def prepare(self) -> str | None:
        """Make the work dir ready; return the checkpoint to resume from, if any."""
        run_file = self.work_dir / RUN_FILE
        try:
            previous = json.loads(run_file.read_text()).get("config_hash")
        except (OSError, ValueError):
            previous = None
        if previous != self.fingerprint:
            if self.work_dir.exists():
                logger.info("starting clean: %s belongs to another config (%s)", self.work_dir, previous)
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir.mkdir(parents=True)
            run_file.write_text(json.dumps({"config_hash": self.fingerprint}))
            return None
        checkpoints = sorted(
            (int(m.group(1)), p) for p in self.work_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
        )
        for step, path in reversed(checkpoints):
            if _complete_checkpoint(path):
                logger.info("resuming from %s (step %d)", path, step)
                return str(path)
            logger.warning("dropping incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
        return None

    def commit(self, model: Any, tokenizer: Any, metrics: dict, measure: Any = None) -> Path:
        """Write model, tokenizer and metrics to the temp folder, then rename it to `out_dir`.
        `measure(folder) -> dict`, when given, runs on the written model before the rename and its
        figures join `metrics` (updated in place), so a committed folder's metrics are complete."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        model.save_pretrained(self.tmp_dir)
        tokenizer.save_pretrained(self.tmp_dir)
        if measure is not None:
            metrics.update(measure(self.tmp_dir))
        (self.tmp_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
        (self.tmp_dir / OUTPUTS_FILE).write_text(json.dumps(output_manifest(self.tmp_dir), indent=1))
        old = self.out_dir.parent / f"{self.out_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.out_dir.exists():
            os.replace(self.out_dir, old)
        os.replace(self.tmp_dir, self.out_dir)
        shutil.rmtree(old, ignore_errors=True)
        if not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return self.out_dir


def make_log_callback(stage: str, keys: tuple[str, ...] = ()) -> Any:
    """A TrainerCallback writing one short log line per logging step (loss, lr and `keys`)."""
    from transformers import TrainerCallback

    class StageLogLine(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            line = f"{stage} step {state.global_step}/{state.max_steps} loss={logs['loss']:.4f}"
            line += f" lr={logs.get('learning_rate', 0.0):.3g}"
            line += "".join(f" {k}={logs[k]:.4g}" for k in keys if k in logs)
            logger.info(line)

    return StageLogLine()


def quiet_progress(trainer: Any) -> None:
    """Keep `trainer`'s progress bar (if any) but not the log dictionaries the Trainer prints."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_bar_only_progress())


def _bar_only_progress():
    """The Trainer's progress bar without the log dictionary it prints at every logging step."""
    from transformers.trainer_callback import ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    return BarOnly()


def train_and_commit(
    run: StageRun, trainer: Any, tokenizer: Any, resume_from: str | None, base: dict, extra_keys: tuple[str, ...] = ()
) -> dict:
    """Run `trainer` (resuming if asked), commit the model atomically (rename into place) and return its metrics.

    `extra_keys` are log keys (e.g. "rewards/accuracies") reported from the last log entry that has them.
    """
    # The progress bar stays; the log dicts the Trainer prints go (metrics are returned, and the
    # stage's log line carries the loss).
    quiet_progress(trainer)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    curve = [(int(h["step"]), float(h["loss"])) for h in history if "loss" in h]
    metrics = {
        **base,
        "train_loss": float(output.training_loss),
        "first_loss": curve[0][1] if curve else None,
        "final_loss": curve[-1][1] if curve else None,
        "loss_curve": curve,
        "steps": int(trainer.state.global_step),
        "resumed_from_step": int(_CHECKPOINT_RE.match(Path(resume_from).name).group(1)) if resume_from else 0,
        "seconds": round(seconds, 3),
        "samples_per_second": output.metrics.get("train_samples_per_second"),
        "config_hash": run.fingerprint,
    }
    for key in extra_keys:
        last = next((h[key] for h in reversed(history) if key in h), None)
        metrics[key] = None if last is None else float(last)
    model = trainer.accelerator.unwrap_model(trainer.model)
    run.commit(model, tokenizer, metrics)
    return metrics


def stage_args(args_cls: Any, cfg: TrainLoopConfig, work_dir: Path, progress: bool, **extra: Any) -> tuple[Any, str]:
    """A TRL config (`SFTConfig`, `DPOConfig`, ...) from the shared loop and device settings plus the
    stage's own fields, and the device it trains on."""
    device, _ = pick_device(cfg.device)
    args = args_cls(
        **trainer_loop_args(cfg, work_dir, progress), **trainer_device_args(device),
        **checkpointing_arg(args_cls, cfg.gradient_checkpointing), max_length=cfg.max_length, **extra,
    )
    return args, device


def train_stage(
    stage: str, out_dir: str | Path, cfg: TrainLoopConfig, model_dirs: list, kept: list[dict], n_quarantined: int,
    build: Any, info: dict, extra_keys: tuple[str, ...] = (),
) -> dict:
    """The skeleton every Trainer stage shares: return a finished run of the same inputs as it is,
    else resume (or start) in the work dir, train the trainer `build(work_dir)` returns
    (trainer, tokenizer, device), commit atomically and return the metrics (`info` added)."""
    run = StageRun(Path(out_dir), fingerprint(stage, cfg, model_dirs, kept), cfg.keep_work_dir)
    if (done := run.finished()) is not None:
        logger.info("%s: %s already trained with this config; reusing it", stage, run.out_dir)
        return done
    resume_from = run.prepare()
    trainer, tokenizer, device = build(run.work_dir)
    base = {"stage": stage, **info, "n_examples": len(kept), "n_quarantined": n_quarantined,
            "device": describe_device(device), "reused": False}
    return train_and_commit(run, trainer, tokenizer, resume_from, base, extra_keys)
