"""Small helpers shared by the asset modules: checkpoint rows, model lookup, report images."""

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from factory import ids, schemas


def checkpoint_frame(records: list[dict], run_id: str) -> pl.DataFrame:
    """CHECKPOINTS rows from records with stage, name, path, parents, datasets, config, metrics."""
    rows = []
    for r in records:
        config, datasets = r.get("config", {}), r.get("datasets", {})
        parents = list(r.get("parents", []))
        rows.append({
            "checkpoint_id": ids.checkpoint_id(r["stage"], {"name": r["name"], **config}, datasets, parents),
            "stage": r["stage"],
            "name": r["name"],
            "path": str(r["path"]),
            "parents": parents,
            "datasets": json.dumps(datasets, sort_keys=True),
            "config": json.dumps(config, sort_keys=True, default=str),
            "metrics": json.dumps(r.get("metrics", {}), sort_keys=True, default=str),
            "created_at": datetime.now(UTC),
            "run_id": run_id,
        })
    return pl.DataFrame(rows, schema=schemas.CHECKPOINTS) if rows else schemas.empty(schemas.CHECKPOINTS)


def find_model(checkpoints: pl.DataFrame, name: str) -> dict:
    """The checkpoint row named `name` (e.g. a teacher's cluster), or a clear error."""
    hit = checkpoints.filter(pl.col("name") == name)
    if not hit.height:
        raise ValueError(f"no checkpoint named {name!r}; have {sorted(checkpoints['name'].to_list())}")
    return hit.row(-1, named=True)


def only(checkpoints: pl.DataFrame) -> dict:
    """The single checkpoint a model asset produced."""
    if checkpoints.height != 1:
        raise ValueError(f"expected one checkpoint, got {checkpoints.height}")
    return checkpoints.row(0, named=True)


def image_markdown(png: Path, title: str = "") -> str:
    """A PNG embedded in Markdown metadata, so the Dagster UI shows the chart."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return f"![{title}](data:image/png;base64,{data})"


def cached_metrics(out_dir: Path, fingerprint: str) -> dict | None:
    """Metrics of a model already built into `out_dir` from the same inputs, else None."""
    f = Path(out_dir) / "factory_build.json"
    if f.exists():
        data = json.loads(f.read_text())
        if data.get("fingerprint") == fingerprint:
            return data["metrics"]
    return None


def write_metrics(out_dir: Path, fingerprint: str, metrics: dict) -> None:
    f = Path(out_dir) / "factory_build.json"
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "metrics": metrics}, default=str, indent=1))
    tmp.replace(f)
