"""Materialize a selection of the graph in-process, all partitions, with progress.

Used by `factory run` and `factory demo`. Partitioned assets are run language by
language; consecutive partitioned assets share one Dagster run per language.

Each start first checks the config against the home's (assets/resources.py), then cleans up
after killed runs: temp leftovers (warehouse/housekeeping.py) and Dagster runs that a killed
process left STARTED (marked failed). Runs carry the pid and host of the process that runs them.
"""

import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from warehouse.home import resolve_home
from warehouse.housekeeping import clean_leftovers, describe_leftovers, pid_alive

PID_TAG, HOST_TAG = "factory/pid", "factory/host"
# A run in one of these states whose process is gone will never finish.
UNFINISHED = (
    dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


@dataclass
class Step:
    assets: list[str]
    partition: str | None


def _graph(assets: list[dg.AssetsDefinition]) -> dict[str, tuple[set[str], bool]]:
    out: dict[str, tuple[set[str], bool]] = {}
    for a in assets:
        for key in a.keys:
            deps = {d.to_user_string() for d in a.asset_deps.get(key, set())}
            out[key.to_user_string()] = (deps, a.partitions_def is not None)
    return out


def toposort(graph: dict[str, tuple[set[str], bool]]) -> list[str]:
    """Dependencies first. Among ready assets: unpartitioned ones that per-language work still
    waits for, then partitioned ones, then the rest, so that per-language work (generations,
    scores, pairs) shares one run per language."""
    names = list(graph)
    pending = {n: {d for d in graph[n][0] if d in graph} for n in names}
    feeds_partitioned = {n for n in names if any(graph[m][1] and _reaches(graph, m, n) for m in names if m != n)}
    order: list[str] = []
    while pending:
        ready = [n for n in names if n in pending and not pending[n]]
        if not ready:
            raise ValueError(f"cycle in asset graph among {sorted(pending)}")
        ready.sort(key=lambda n: (0 if n in feeds_partitioned and not graph[n][1] else 1 if graph[n][1] else 2, names.index(n)))
        pick = ready[0]
        order.append(pick)
        del pending[pick]
        for deps in pending.values():
            deps.discard(pick)
    return order


def resolve_selection(selection: str | None, graph: dict[str, tuple[set[str], bool]]) -> list[str]:
    """`a,b` names; `+a` adds a's upstream, `a+` its downstream; empty or `*` means all."""
    if not selection or selection.strip() == "*":
        return toposort(graph)
    chosen: set[str] = set()
    for raw in (s.strip() for s in selection.split(",")):
        if not raw:
            continue
        name = raw.strip("+")
        if name not in graph:
            raise ValueError(f"unknown asset {name!r}; known: {', '.join(sorted(graph))}")
        chosen.add(name)
        if raw.startswith("+"):
            stack = [name]
            while stack:
                for dep in graph[stack.pop()][0]:
                    if dep in graph and dep not in chosen:
                        chosen.add(dep)
                        stack.append(dep)
        if raw.endswith("+"):
            chosen.update(other for other in graph if _reaches(graph, other, name))
    return [n for n in toposort(graph) if n in chosen]


def _reaches(graph, node: str, target: str) -> bool:
    stack, seen = [node], set()
    while stack:
        cur = stack.pop()
        if cur == target:
            return True
        if cur in seen or cur not in graph:
            continue
        seen.add(cur)
        stack.extend(graph[cur][0])
    return False


def plan(order: list[str], graph, partitions: Iterable[str]) -> list[Step]:
    """Group consecutive partitioned assets into one step per language."""
    steps: list[Step] = []
    parts = list(partitions)
    i = 0
    while i < len(order):
        if graph[order[i]][1]:
            j = i
            while j < len(order) and graph[order[j]][1]:
                j += 1
            steps.extend(Step(order[i:j], p) for p in parts)
            i = j
        else:
            steps.append(Step([order[i]], None))
            i += 1
    return steps


def instance() -> dg.DagsterInstance:
    """A persistent instance under FACTORY_HOME/.dagster (unless DAGSTER_HOME is set),
    so runs made from the CLI show up in `dagster dev`."""
    home = os.environ.get("DAGSTER_HOME") or str(resolve_home() / ".dagster")
    Path(home).mkdir(parents=True, exist_ok=True)
    yaml_path = Path(home) / "dagster.yaml"
    if not yaml_path.exists():
        yaml_path.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = home
    return dg.DagsterInstance.get()


class StepFailed(RuntimeError):
    """One step of a run failed: `str()` is one line (asset, partition, cause, hint); `trace` has the rest."""

    def __init__(self, label: str, cause: str, trace: str, run_id: str):
        self.label, self.cause, self.trace, self.run_id = label, cause, trace, run_id
        super().__init__(
            f"{label} failed: {cause}\n  (run {run_id[:8]}: `--verbose` prints the trace; "
            f"`dagster dev -m assets` shows the run's full log)"
        )


def job_name(step: Step) -> str:
    """A readable Dagster job name per step (`generations__scores`), instead of `__ephemeral_asset_job__`."""
    name = "__".join(step.assets)
    return name if len(name) <= 120 else f"{step.assets[0]}__to__{step.assets[-1]}"


def _run_error(events):
    """The error of a run that failed outside a step (a resource that could not start, e.g. a bad config)."""
    for e in events:
        error = getattr(e.event_specific_data, "error", None)
        if e.event_type_value in ("RESOURCE_INIT_FAILURE", "PIPELINE_FAILURE") and error is not None:
            return error
    return None


def _cause(error) -> str:
    """The innermost error's own message, on one line."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    lines = (error.message or "").strip().splitlines()
    text = lines[-1] if lines else error.cls_name or "unknown error"
    return re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", text)  # `pkg.mod.Error: msg` -> `Error: msg`


def run_tags() -> dict[str, str]:
    """Who runs a run: so a later start can tell a run whose process was killed from a live one."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def fail_orphaned_runs(inst: dg.DagsterInstance) -> list[str]:
    """Mark failed the unfinished runs started by a process of this machine that is gone (killed
    mid-run, they would stay STARTED forever). Runs without our pid tag (`dagster dev`, which has
    its own run monitoring) or from another host are left alone. Returns the run ids marked."""
    host = socket.gethostname()
    marked = []
    for record in inst.get_run_records(dg.RunsFilter(statuses=list(UNFINISHED))):
        run = record.dagster_run
        pid, run_host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        if not pid or not pid.isdigit() or run_host != host:
            continue
        since = record.start_time or record.create_timestamp.timestamp()
        if pid_alive(int(pid), since=since):
            continue
        inst.report_run_failed(run, message=f"the process that ran it (pid {pid} on {host}) is gone: killed mid-run")
        marked.append(run.run_id)
    return marked


def housekeeping(inst: dg.DagsterInstance) -> str | None:
    """Clean up after killed runs; one line saying what was done, or None."""
    home = resolve_home()
    removed = clean_leftovers(home)
    failed = fail_orphaned_runs(inst)
    done = []
    if removed:
        done.append(describe_leftovers(removed, home))
    if failed:
        ids = ", ".join(r[:8] for r in failed)
        done.append(f"marked {len(failed)} run{'s' if len(failed) > 1 else ''} of killed processes as failed ({ids})")
    return "housekeeping: " + "; ".join(done) if done else None


def materialize_selection(
    selection: str | None = None, partitions: list[str] | None = None, log_level: str = "CRITICAL", echo=None,
    force: bool = False,
) -> list[Step]:
    """Materialize `selection` (all assets by default) for `partitions` (default: all).

    Progress is a bar on a terminal, and one line per finished step otherwise (logs, CI);
    `echo` receives those lines (default: print). A failed step raises StepFailed. Dagster's
    console log shows `log_level` and above; the run's own log in the instance keeps everything.
    A config that differs from the home's (see assets/resources.py) raises ConfigMismatch, unless
    `force`, which records it as the home's config."""
    import sys
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from assets.definitions import ALL_ASSETS, defs
    from assets.partitions import language_partitions

    graph = _graph(ALL_ASSETS)
    order = resolve_selection(selection, graph)
    keys = partitions or language_partitions.get_partition_keys()
    unknown = set(keys) - set(language_partitions.get_partition_keys())
    if unknown:
        raise ValueError(f"unknown partitions {sorted(unknown)}; the config's languages are {language_partitions.get_partition_keys()}")
    steps = plan(order, graph, keys)
    say = echo or print
    note = defs.resources["factory"].check_home(force=force)
    if note:
        say(note)
    inst = instance()
    if done := housekeeping(inst):
        say(done)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    jobs = {name: dg.define_asset_job(name, selection=step.assets) for step in steps for name in [job_name(step)]}
    step_defs = dg.Definitions(assets=ALL_ASSETS, jobs=list(jobs.values()), resources=defs.resources)
    interactive = sys.stdout.isatty()
    tags = run_tags()
    t_all = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not interactive,
    ) as progress:
        task = progress.add_task("materializing", total=len(steps))
        warn = progress.console.print if interactive else say
        for i, step in enumerate(steps, 1):
            label = ", ".join(step.assets) + (f" [{step.partition}]" if step.partition else "")
            progress.update(task, description=label)
            t0 = time.perf_counter()
            result = step_defs.resolve_job_def(job_name(step)).execute_in_process(
                instance=inst, partition_key=step.partition, run_config=run_config, raise_on_error=False, tags=tags,
            )
            if not result.success:
                failure = next((e for e in result.all_events if e.is_step_failure), None)
                error = failure.step_failure_data.error if failure else _run_error(result.all_events)
                asset = failure.step_key if failure else label
                where = f"{asset} [{step.partition}]" if step.partition else asset
                raise StepFailed(where, _cause(error) if error else "see the Dagster run log",
                                 error.to_string() if error else "", result.run_id)
            for ev in (e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"):
                data = ev.event_specific_data
                if not data.passed:
                    part = data.partition or step.partition
                    warn(f"check failed: {data.asset_key.to_user_string()}.{data.check_name}"
                         + (f" [partition {part}]" if part else "") + f" ({data.severity.value.lower()})")
            progress.advance(task)
            if not interactive:
                say(f"[{i}/{len(steps)}] {label} done in {time.perf_counter() - t0:.1f}s "
                    f"(total {time.perf_counter() - t_all:.0f}s)")
    return steps
