"""Materialize a selection of the graph with Dagster, all partitions, with progress.

Used by `factory run` and `factory demo`. Dagster resolves the selection (its asset selection
syntax; `a,b`, `+a`, `a+` are rewritten into it) over the asset graph. The work is then cut into
steps, each one Dagster run of a named job: a chain of language-partitioned assets runs as one
run per language (`generations__scores [es]`), an unpartitioned asset as one run. A step starts
once the steps it needs have succeeded: the same language's upstream partitions (Dagster's
identity partition mapping), every partition of an upstream asset that an unpartitioned one
reads. Up to `workers` steps run at once, each in a worker process that executes its run with
`dagster.execute_job` on a reconstructable job; one worker runs the steps in this process.

Each start first checks the config against the home's (assets/resources.py), then cleans up
after killed runs: temp leftovers (warehouse/housekeeping.py) and Dagster runs that a killed
process left STARTED (marked failed). Runs carry the pid and host of the process that runs them.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from assets.config import config_option as find_config_option
from assets.config import config_path as find_config
from assets.definitions import build_definitions
from assets.io_manager import SIDE_OUTPUT
from assets.resources import FactoryResource
from factory.quiet import quiet_libraries
from warehouse.home import home_option, home_url, resolve_home
from warehouse.housekeeping import clean_leftovers, describe_leftovers, pid_alive

PID_TAG, HOST_TAG = "factory/pid", "factory/host"
# A run in one of these states whose process is gone will never finish.
UNFINISHED = (
    dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
_TERM = re.compile(r"(\d*\+)?([A-Za-z_]\w*)(\+\d*)?")


@dataclass(frozen=True)
class Step:
    """One Dagster run: `assets` (one job) for one `partition`, once the steps in `after` succeeded."""

    assets: list[str]
    partition: str | None
    after: frozenset[int] = field(default_factory=frozenset)
    side: frozenset[str] = field(default_factory=frozenset)  # side outputs made with the others, not shown

    @property
    def label(self) -> str:
        return ", ".join(a for a in self.assets if a not in self.side) + (f" [{self.partition}]" if self.partition else "")


def dagster_selection(text: str | None) -> str:
    """`text` in Dagster's asset selection syntax. The shorthand `a,b`, `+a` (a and everything
    upstream), `a+` (and everything downstream), `2+a` (two levels up) becomes
    `+key:"a" or key:"b"`; anything else (`group:training`, `key:"sft_*"`,
    `+key:"scores" and not key:"arbiter"`) is Dagster's syntax already and is kept."""
    if not text or not text.strip() or text.strip() == "*":
        return "*"
    terms = [t.strip() for t in text.split(",") if t.strip()]
    matches = [_TERM.fullmatch(t) for t in terms]
    if not all(matches):
        return text.strip()
    return " or ".join(f'{m[1] or ""}key:"{m[2]}"{m[3] or ""}' for m in matches)


def select(text: str | None, graph) -> list[dg.AssetKey]:
    """The asset keys `text` selects in `graph` (an AssetGraph), dependencies first."""
    query = dagster_selection(text)
    known = {k.to_user_string() for k in graph.get_all_asset_keys()}
    named = re.findall(r'key:"([^"*]+)"', query) if query != (text or "").strip() else []
    if unknown := [n for n in named if n not in known]:
        raise ValueError(f"unknown asset {unknown[0]!r}; known: {', '.join(sorted(known))}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Dagster's BetaWarning on its own parser's defaults
            keys = dg.AssetSelection.from_string(query).resolve(graph)
    except Exception as exc:  # a parse error, or a key Dagster does not know
        raise ValueError(f"invalid selection {text!r}: {str(exc).splitlines()[0]}") from None
    if not keys:
        raise ValueError(f"selection {text!r} matches no asset; known: {', '.join(sorted(known))}")
    # A step's side outputs (e.g. native_vs_translated beside preference_pairs) are made together with it.
    keys = {k for key in keys for k in graph.get_execution_set_asset_and_check_keys(key) if isinstance(k, dg.AssetKey)}
    return [k for k in graph.toposorted_asset_keys if k in keys]


def _same_partition(graph, key: dg.AssetKey, parent: dg.AssetKey) -> bool:
    """Partition p of `key` reads partition p of `parent` (and nothing else of it)."""
    if graph.get(key).partitions_def is None or graph.get(parent).partitions_def is None:
        return False
    return isinstance(graph.get_partition_mapping(key, parent), dg.IdentityPartitionMapping)


def plan(graph, keys: list[dg.AssetKey], partitions: list[str]) -> list[Step]:
    """Steps for `keys` (dependencies first) over `partitions`. A partitioned asset joins the step
    of a partitioned parent (one run per language: selections__preference_pairs [es]) when all
    else it needs comes before that step anyway, so joining never delays the step; otherwise
    (scores also needs the arbiter, which generations does not) it is a step of its own. An
    unpartitioned asset is a step of its own."""
    chosen = set(keys)

    @functools.cache
    def above(key: dg.AssetKey) -> frozenset[dg.AssetKey]:
        parents = [p for p in graph.get(key).parent_keys if p in chosen]
        return frozenset(parents).union(*(above(p) for p in parents))

    groups: list[list[dg.AssetKey]] = []
    group_of: dict[dg.AssetKey, int] = {}
    for key in keys:
        parents = [p for p in graph.get(key).parent_keys if p in chosen]
        home = next((group_of[k] for k in graph.get_execution_set_asset_and_check_keys(key) if k in group_of), None)
        for g in [] if home is not None else sorted({group_of[p] for p in parents if _same_partition(graph, key, p)}, reverse=True):
            before = frozenset().union(*(above(m) for m in groups[g]))
            if all(group_of[p] == g or p in before for p in parents):
                home = g
                break
        if home is None:
            groups.append([])
            home = len(groups) - 1
        groups[home].append(key)
        group_of[key] = home

    index: dict[tuple[int, str | None], int] = {}
    for g, members in enumerate(groups):
        for part in partitions if graph.get(members[0]).partitions_def is not None else [None]:
            index[(g, part)] = len(index)
    steps = []
    for (g, part), _ in sorted(index.items(), key=lambda item: item[1]):
        after = set()
        for key in groups[g]:
            for p in graph.get(key).parent_keys:
                if p not in chosen or group_of[p] == g:
                    continue
                if graph.get(p).partitions_def is None:
                    after.add(index[(group_of[p], None)])
                elif part is not None and _same_partition(graph, key, p):
                    after.add(index[(group_of[p], part)])
                else:
                    after.update(index[(group_of[p], q)] for q in partitions)
        side = frozenset(k.to_user_string() for k in groups[g] if graph.get(k).metadata.get(SIDE_OUTPUT))
        steps.append(Step([k.to_user_string() for k in groups[g]], part, frozenset(after), side))
    return steps


def instance(home: str | os.PathLike | None = None) -> dg.DagsterInstance:
    """A persistent instance under FACTORY_HOME/.dagster (unless DAGSTER_HOME is set),
    so runs made from the CLI show up in `dagster dev`. The env is left as it is: one process
    may run into several homes (tests do), and worker processes are told the folder."""
    folder = os.environ.get("DAGSTER_HOME") or str(resolve_home(home) / ".dagster")
    Path(folder).mkdir(parents=True, exist_ok=True)
    yaml_path = Path(folder) / "dagster.yaml"
    if not yaml_path.exists():
        yaml_path.write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(folder)


class StepFailed(RuntimeError):
    """One step of a run failed: `str()` is one line (asset, partition, cause, hint); `trace` has the rest."""

    def __init__(self, label: str, cause: str, trace: str, run_id: str):
        self.label, self.cause, self.trace, self.run_id = label, cause, trace, run_id
        where = f"run {run_id[:8]}: " if run_id else ""
        super().__init__(
            f"{label} failed: {cause}\n  ({where}`--verbose` prints the trace; "
            f"`factory ui{find_config_option()}{home_option()}` (dagster dev -m assets.definitions) shows the run's full log)"
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
    if error.cls_name == "DagsterExecutionInterruptedError":
        return "interrupted (Ctrl-C or a stop signal)"
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


def housekeeping(inst: dg.DagsterInstance, home: str | os.PathLike | None = None) -> str | None:
    """Clean up after killed runs; one line saying what was done, or None."""
    home = resolve_home(home)
    removed = clean_leftovers(home)
    failed = fail_orphaned_runs(inst)
    done = []
    if removed:
        done.append(describe_leftovers(removed, home))
    if failed:
        ids = ", ".join(r[:8] for r in failed)
        done.append(f"marked {len(failed)} run{'s' if len(failed) > 1 else ''} of killed processes as failed ({ids})")
    return "housekeeping: " + "; ".join(done) if done else None


def step_job(config: str | None, home: str | None, jobs: list, name: str) -> dg.JobDefinition:
    """Job `name` of a plan's `jobs` ([name, [asset, ...]] pairs), built from (config, home): what
    a worker process reconstructs (dagster.build_reconstructable_job points here)."""
    stamp = find_config(config).stat().st_mtime_ns if find_config(config).exists() else 0
    return _plan_defs(config, home, json.dumps(jobs), stamp).resolve_job_def(name)


@functools.lru_cache(maxsize=4)
def _plan_defs(config: str | None, home: str | None, jobs: str, _stamp: int) -> dg.Definitions:
    """One Definitions per plan and process (a worker runs many steps of one plan)."""
    return build_definitions(config, home, [
        dg.define_asset_job(name, selection=assets, executor_def=dg.in_process_executor)
        for name, assets in json.loads(jobs)
    ])


@dataclass
class Outcome:
    """What a step's run reports back (plain data: it crosses from the worker process)."""

    run_id: str
    seconds: float
    failure: tuple[str, str, str] | None = None  # where, cause, trace
    checks: list[str] = field(default_factory=list)  # failed asset checks, one line each


def execute_step(config: str | None, home: str | None, jobs: list, step: Step, log_level: str,
                 inst: dg.DagsterInstance | None = None) -> Outcome:
    """Run one step as a Dagster run (`dagster.execute_job`) in this process, recorded in the instance."""
    job = dg.build_reconstructable_job("assets.run", "step_job", (config, home, jobs, job_name(step)))
    tags = {**run_tags(), **({"dagster/partition": step.partition} if step.partition else {})}
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    t0 = time.perf_counter()
    _WORKER["busy"] = True
    try:  # not opened as a context manager: that would start the resources again, to load outputs
        result = dg.execute_job(job, instance=inst or _WORKER["instance"], run_config=run_config, tags=tags)
    finally:
        _WORKER["busy"] = False
    events = result.all_events
    outcome = Outcome(result.run_id, time.perf_counter() - t0)
    if not result.success:
        failure = next((e for e in events if e.is_step_failure), None)
        error = failure.step_failure_data.error if failure else _run_error(events)
        asset = failure.step_key if failure else ", ".join(step.assets)
        where = f"{asset} [{step.partition}]" if step.partition else asset
        outcome.failure = (where, _cause(error) if error else "see the Dagster run log", error.to_string() if error else "")
    for ev in (e for e in events if e.event_type_value == "ASSET_CHECK_EVALUATION"):
        data = ev.event_specific_data
        if not data.passed:
            part = data.partition or step.partition
            outcome.checks.append(f"check failed: {data.asset_key.to_user_string()}.{data.check_name}"
                                  + (f" [partition {part}]" if part else "") + f" ({data.severity.value.lower()})")
    return outcome


_WORKER: dict = {}


def _start_worker(threads: int, dagster_home: str) -> None:
    """A worker process: quiet libraries, share the cores, open the run's instance, and leave
    once the `factory run` that started it is gone (killed)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    quiet_libraries()
    _WORKER["instance"] = dg.DagsterInstance.from_config(dagster_home)
    threading.Thread(target=_leave_with_parent, args=(os.getppid(),), daemon=True).start()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Dagster handles them itself while a run executes
        signal.signal(sig, _interrupted)


def _interrupted(signum, frame) -> None:
    """Outside a run (Dagster handles both signals while one executes): Ctrl-C reaches every
    process of the terminal, and an idle worker leaves it to `factory run`, which stops the pool;
    a SIGTERM stops an idle worker quietly."""
    if _WORKER.get("busy"):
        raise KeyboardInterrupt
    if signum != signal.SIGINT:
        os._exit(1)


def _leave_with_parent(parent: int) -> None:
    """A pool worker whose parent was killed would wait for work forever (it holds its queue's
    write end itself). Its current run finishes first, so the run's record is complete."""
    while os.getppid() == parent or _WORKER.get("busy"):
        time.sleep(1.0)
    os._exit(0)


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _InProcess:
    """The pool's interface, running each step here at submit time (one worker)."""

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


def run_steps(steps: list[Step], submit: Callable[[Step], Future], workers: int,
              started: Callable[[Step], None], finished: Callable[[Step, Outcome], None]) -> Outcome | None:
    """Submit each step once the steps it needs have succeeded, at most `workers` at once, in plan
    order. After a failure nothing new starts; the steps already running finish. Returns the first failure."""
    waiting, done, running = list(range(len(steps))), set(), {}
    failure = None
    while waiting or running:
        if failure is None:
            for i in [i for i in waiting if steps[i].after <= done][: max(0, workers - len(running))]:
                waiting.remove(i)
                started(steps[i])
                running[submit(steps[i])] = i
        if not running:
            break
        for future in wait(running, return_when=FIRST_COMPLETED).done:
            i = running.pop(future)
            try:
                outcome = future.result()
            except BrokenProcessPool:
                outcome = Outcome("", 0.0, (steps[i].label, "its worker process died (killed, or out of memory)", ""))
            finished(steps[i], outcome)
            if outcome.failure:
                failure = failure or outcome
            else:
                done.add(i)
    return failure


def materialize_selection(
    selection: str | None = None, partitions: list[str] | None = None, log_level: str = "CRITICAL", echo=None,
    force: bool = False, workers: int | None = None, config: str | None = None, home: str | None = None,
) -> list[Step]:
    """Materialize `selection` (all assets by default) for `partitions` (default: all), with up to
    `workers` runs at once (default: the core count; 1 runs every step in this process).

    Progress is a bar on a terminal, and one line per finished step otherwise (logs, CI);
    `echo` receives those lines (default: print). A failed step raises StepFailed. Dagster's
    console log shows `log_level` and above; the run's own log in the instance keeps everything.
    A config that differs from the home's (see assets/resources.py) raises ConfigMismatch, unless
    `force`, which records it as the home's config. `config` and `home` default to FACTORY_CONFIG
    and FACTORY_HOME."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    config = config or os.environ.get("FACTORY_CONFIG")
    home = home_url(home)  # an absolute folder, or the s3:// URL: each step's resources open the same home
    resolve_home(home)  # its local folder exists before any worker uses it
    defs = build_definitions(config, home)
    graph = defs.resolve_asset_graph()
    keys = select(selection, graph)
    languages = next(graph.get(k).partitions_def for k in graph.get_all_asset_keys() if graph.get(k).partitions_def)
    parts = partitions or languages.get_partition_keys()
    if unknown := set(parts) - set(languages.get_partition_keys()):
        raise ValueError(f"unknown partitions {sorted(unknown)}; the config's languages are {languages.get_partition_keys()}")
    steps = plan(graph, keys, list(parts))
    say = echo or print
    if note := FactoryResource(home=home, config_path=config).check_home(force=force):
        say(note)
    inst = instance(home)
    if done := housekeeping(inst, home):
        say(done)
    jobs = sorted({job_name(s): s.assets for s in steps}.items())
    workers = max(1, workers or default_workers())
    if workers == 1 or len(steps) == 1:
        pool, workers = _InProcess(), 1
    else:
        threads = max(1, default_workers() // workers)
        others = set(multiprocessing.active_children())
        pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start_worker,
                                   (threads, inst.root_directory))
    interactive = sys.stdout.isatty()
    t_all, count, running, dead_workers = time.perf_counter(), [0], [], [False]
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not interactive,
    ) as progress:
        task = progress.add_task("materializing", total=len(steps))
        warn = progress.console.print if interactive else say

        def started(step: Step) -> None:
            running.append(step.label)
            progress.update(task, description=" | ".join(running))

        def finished(step: Step, outcome: Outcome) -> None:
            running.remove(step.label)
            progress.update(task, description=" | ".join(running) or "materializing")
            for line in outcome.checks:
                warn(line)
            if outcome.failure:
                dead_workers[0] |= not outcome.run_id
                return
            count[0] += 1
            progress.advance(task)
            if not interactive:
                say(f"[{count[0]}/{len(steps)}] {step.label} done in {outcome.seconds:.1f}s "
                    f"(total {time.perf_counter() - t_all:.0f}s)")

        try:
            submit = functools.partial(pool.submit, execute_step, config, home, jobs, log_level=log_level,
                                       **({"inst": inst} if workers == 1 else {}))
            failure = run_steps(steps, submit, workers, started, finished)
        finally:
            if isinstance(pool, ProcessPoolExecutor):
                if dead_workers[0]:  # a broken pool: its other workers would finish their runs, then wait forever
                    for worker in set(multiprocessing.active_children()) - others:
                        worker.kill()
                pool.shutdown(wait=True, cancel_futures=True)
    if dead_workers[0]:  # the dead worker and the ones stopped with it left their runs STARTED
        fail_orphaned_runs(inst)
    if failure:
        raise StepFailed(*failure.failure, failure.run_id)
    return steps
