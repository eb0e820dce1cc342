"""Small helpers shared by the asset modules: checkpoint rows, model lookup, report images."""

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from factory import ids
from factory.decontam import contamination_report, decontamination_gate, eval_prompts
from factory.generation.registry import EMBEDDED_PREFIX, make_backend, served_identity, with_model_path
from factory.generation.serve import SERVE_PREFIX
from factory.model_sources import parse_model_ref, read_source_record
from factory.scoring.sequence_classifier import SequenceClassifierScorer
from training.convert import resolve_model
from warehouse import schemas


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


def source_record(ref: str, home) -> dict | None:
    """A `checkpoints` record for a gguf:/pkg: model reference: the converted folder (converted on
    first use, cached in FACTORY_HOME/models/sources/), with the source file and its sha256 as
    config, so lineage reaches the original file. None for folder and hub references."""
    if not parse_model_ref(ref).needs_conversion:
        return None

    folder = resolve_model(ref, home=home)
    return {"stage": "source", "name": ref, "path": folder, "config": read_source_record(folder) or {}}


def model_folder(ref: str, home, pool: pl.DataFrame | None = None) -> tuple[str, list[str]]:
    """What to load for a model reference, and its parent checkpoint ids: the embedded pool's model
    for `embedded:NAME`, a converted folder (and the source's checkpoint) for gguf:/pkg:, else the
    folder or hub name as given (no parent)."""
    if ref.startswith(EMBEDDED_PREFIX):
        if pool is None:
            raise ValueError(f"{ref}: an embedded model needs the embedded pool")
        row = find_model(pool, ref.removeprefix(EMBEDDED_PREFIX))
        return row["path"], [row["checkpoint_id"]]
    record = source_record(ref, home)
    if record is None:
        return ref, []
    return record["path"], checkpoint_frame([record], "")["checkpoint_id"].to_list()


class Serving:
    """The run's `serve:` entries for resolve_slot: `serving(NAME)` is `(api_base, model name to
    send)`, starting the server on first use; `serving.identity(NAME)` is what that entry serves
    (`registry.served_identity` of its resolved folder), without starting anything."""

    def __init__(self, cfg, home, servers):
        self.cfg, self.home, self.servers = cfg, home, servers
        self._identity: dict[str, str] = {}

    def __call__(self, name: str) -> tuple[str, str]:
        return self.servers.endpoint(self.cfg, name, self.home)

    def identity(self, name: str) -> str:
        if name not in self._identity:
            spec = next(s for s in self.cfg.serve if s.name == name)
            self._identity[name] = served_identity(resolve_model(spec.model, home=self.home))
        return self._identity[name]


def serving(cfg, home, servers) -> Serving | None:
    """The run's served models (see Serving) for slots whose api_base is `serve:NAME`: the run's
    ModelServers resource starts each server on first use. None without the resource."""
    return Serving(cfg, home, servers) if servers is not None else None


def backend_for(t, pool: pl.DataFrame | None, home, serving=None):
    """(config naming what is actually loaded, backend) for a generation slot (see resolve_slot)."""
    t, build = resolve_slot(t, pool, home, serving)
    return t, make_backend(build)


def resolve_slot(t, pool: pl.DataFrame | None, home, serving=None):
    """(config naming what is actually loaded, config to build its backend from) for a generation
    slot: an embedded model resolves to the pool's folder, a gguf:/pkg: source to its converted
    folder, an `openai` slot whose api_base is `serve:NAME` to the server the run starts for it
    (`serving(NAME)` gives its api_base and model name), anything else (a folder, a hub name, a
    served model) is used as given. The first config is what the completion ids hash: for a
    `serve:` slot it keeps `serve:NAME` and the configured model, so ids do not change with the
    port the server got, plus what the entry serves (`served`: its weights' digest), so pointing
    the entry at another checkpoint answers its prompts again; the two differ only there."""
    if t.backend == "openai" and t.api_base.startswith(SERVE_PREFIX):
        if serving is None:
            raise ValueError(f"{t.name}: api_base {t.api_base} needs the run's model servers")
        name = t.api_base.removeprefix(SERVE_PREFIX)
        t = t.model_copy(update={"served": serving.identity(name)})
        api_base, served = serving(name)
        return t, t.model_copy(update={"api_base": api_base, "model": served})
    if t.embedded or t.backend != "openai":
        t = with_model_path(t, model_folder(t.model, home, pool)[0])
    return t, t


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


def teacher_backends(cfg, pool: pl.DataFrame, home, servers=None) -> list:
    """(TeacherConfig, backend) for every configured teacher, naming the folder actually loaded."""
    return [backend_for(t, pool, home, serving(cfg, home, servers)) for t in cfg.resolved_teachers()]


def configured_scorers(cfg, arbiter: pl.DataFrame, home, servers=None) -> list:
    """The Arbiter, plus the LLM judge scorer when configured."""
    scorers = [arbiter_scorer(cfg, arbiter)[0]]
    if cfg.scoring.llm_judge is not None:
        judge = backend_for(cfg.scoring.llm_judge_model, None, home, serving(cfg, home, servers))[1]
        scorers.append(cfg.scoring.llm_judge.build(judge))
    return scorers


def primary_scorer(cfg) -> str:
    """The scorer whose rewards drive routing and pairs."""
    return cfg.scoring.llm_judge.name if cfg.scoring.primary == "llm_judge" else "arbiter"


def arbiter_scorer(cfg, arbiter: pl.DataFrame):
    """The Arbiter (the `arbiter` asset's checkpoint) as a scorer, and its checkpoint row."""
    row = only(arbiter)
    return SequenceClassifierScorer(
        row["path"], batch_size=cfg.arbiter.batch_size, max_length=cfg.arbiter.max_length, device=cfg.arbiter.device,
        name="arbiter",
    ), row


def contamination_check(name: str, rows: pl.DataFrame, prompts: pl.DataFrame, evals: pl.DataFrame, cfg) -> dg.AssetCheckResult:
    """Re-verify written training rows (texts from `prompts`) against every eval prompt of every
    language, `evals` from eval_prompts (blocking: downstream training stops)."""
    report = contamination_report(rows, prompts, evals, cfg.arbitrage.decontam)
    return dg.AssetCheckResult(
        check_name=name, passed=report["contaminated_rows"] == 0 and report["eval_prompt_ids"] == 0,
        metadata={"contaminated_rows": report["contaminated_rows"], "eval_prompt_ids": report["eval_prompt_ids"],
                  "examples": dg.MetadataValue.json(report["examples"])},
    )


def all_eval_prompts(wh, prompts: pl.DataFrame) -> pl.DataFrame:
    """Every language's eval prompts: the stored table's and those of this step's `prompts` input."""
    return eval_prompts(wh.read_table("prompts", columns=["prompt_id", "language", "text", "split"]) if wh.has("prompts") else None, prompts)


def decontaminated_prompts(wh, prompts: pl.DataFrame, cfg) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`prompts` without the train prompts that match or overlap a held-out (eval or dev) prompt, as the
    SFT data and the offline pairs are (the online rounds sample the train split themselves), and
    those prompts as quarantine rows."""
    train = prompts.filter(pl.col("split") == "train").select("prompt_id")
    _, hits = decontamination_gate(train, prompts, all_eval_prompts(wh, prompts), cfg.arbitrage.decontam,
                                   cfg.arbitrage.decontaminate)
    return prompts.filter(~pl.col("prompt_id").is_in(hits["row_key"].to_list())), hits
