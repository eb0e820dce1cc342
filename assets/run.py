"""Materialize a selection of the graph in-process, all partitions, with progress.

Used by `factory run` and `factory demo`. Partitioned assets are run language by
language; consecutive partitioned assets share one Dagster run per language.
"""

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg


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
    from warehouse.home import resolve_home

    home = os.environ.get("DAGSTER_HOME") or str(resolve_home() / ".dagster")
    Path(home).mkdir(parents=True, exist_ok=True)
    yaml_path = Path(home) / "dagster.yaml"
    if not yaml_path.exists():
        yaml_path.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = home
    return dg.DagsterInstance.get()


def materialize_selection(selection: str | None = None, partitions: list[str] | None = None, log_level: str = "WARNING") -> list[Step]:
    """Materialize `selection` (all assets by default) for `partitions` (default: all)."""
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
    inst = instance()
    resources = defs.resources
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("materializing", total=len(steps))
        for step in steps:
            label = ", ".join(step.assets) + (f" [{step.partition}]" if step.partition else "")
            progress.update(task, description=label)
            result = dg.materialize(
                ALL_ASSETS,
                selection=step.assets,
                partition_key=step.partition,
                resources=resources,
                instance=inst,
                run_config=run_config,
                raise_on_error=False,
            )
            if not result.success:
                failure = next((e for e in result.all_events if e.is_step_failure), None)
                detail = failure.step_failure_data.error.to_string() if failure else "see the Dagster run log"
                raise RuntimeError(f"materializing {label} failed:\n{detail}")
            checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
            for ev in checks:
                data = ev.event_specific_data
                if not data.passed:
                    progress.console.print(f"[yellow]check failed: {data.asset_key.to_user_string()}.{data.check_name} {label}")
            progress.advance(task)
    return steps
