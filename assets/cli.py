"""The `factory` command line: run the pipeline, query it, trace it, publish it."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from assets.profiles import profile_names
from warehouse.sql import FORMATS

app = typer.Typer(
    help="Multilingual preference-data factory: Dagster assets over Parquet + DuckDB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help=f"Run config YAML (or a shipped profile name: {', '.join(profile_names())}). Env: FACTORY_CONFIG."),
]
HomeOpt = Annotated[str | None, typer.Option("--home", help="Warehouse folder. Env: FACTORY_HOME (default ./factory_home).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="On failure, print the whole trace (the run log keeps it anyway).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run even if the home was built with a config that differs in keys that decide its data, and record this config as the home's.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", "-w", min=1, help="Dagster runs at once, each in a worker process (independent language partitions in parallel). Default: the core count; 1 runs everything in this process.")]


def _materialize(selection: str | None, partitions: list[str] | None, verbose: bool, force: bool = False,
                 workers: int | None = None):
    """Run a selection; a failed step becomes one red line naming the asset, partition and cause."""
    from assets.run import StepFailed, materialize_selection

    try:
        return materialize_selection(selection, partitions, echo=typer.echo, force=force, workers=workers)
    except StepFailed as exc:
        if verbose:
            typer.echo(exc.trace, err=True)
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    except (ValueError, RuntimeError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None


def _fail(message: str, code: int = 2) -> NoReturn:
    """One red line on stderr, then exit with `code`."""
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(code)


def _env(config: str | None, home: str | None, *, home_use: str = "create", offline: bool = True) -> None:
    """Options become env vars so Dagster definitions and resources see the same choice.

    `home_use`: "create" makes the home if missing (run, demo, ui); "read" needs an existing local
    home and creates nothing (a mistyped --home is an error, not a new empty home); "none" leaves
    the home alone. `offline` False leaves the hub reachable (publish --push-to-hub)."""
    for flag, value in (("--config", config), ("--home", home)):
        if value is not None and not value.strip():
            _fail(f"{flag} is empty: give a value or leave the option out")
    if config:
        from assets.config import config_path

        os.environ["FACTORY_CONFIG"] = str(config_path(config).resolve())
    if home:
        from warehouse.home import home_url

        os.environ["FACTORY_HOME"] = home_url(home)  # a folder made absolute, or an s3:// URL as it is
    from factory.quiet import quiet_libraries

    quiet_libraries(offline=offline)
    from assets.config import ConfigError, active_config
    from warehouse.home import NoWarehouse, WarehouseWriteError, existing_home, resolve_home

    try:
        active_config()
        if home_use == "read":
            existing_home()
        if home_use != "none":
            resolve_home()  # a home that cannot be created (read-only, a file in the way) is one line, here
    except (ConfigError, NoWarehouse, WarehouseWriteError) as exc:
        _fail(str(exc))


@app.command()
def run(
    select: Annotated[str | None, typer.Option("--select", "-s", help="Assets: `a,b`; `+a` adds upstream, `a+` downstream; or Dagster's selection syntax (`group:training`, `+key:\"scores\" and not key:\"arbiter\"`). Default: all.")] = None,
    partition: Annotated[list[str] | None, typer.Option("--partition", "-p", help="Language partition(s); default all.")] = None,
    config: ConfigOpt = None,
    home: HomeOpt = None,
    verbose: VerboseOpt = False,
    force: ForceOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Materialize the selected assets, all partitions, as Dagster runs (parallel across languages), with progress."""
    _env(config, home)
    steps = _materialize(select, partition or None, verbose, force, workers)
    from warehouse.home import home_option

    at = home_option()
    typer.echo(f"done: {len(steps)} step(s). Inspect with `factory status{at}` or `factory sql \"...\"{at}`.")


@app.command()
def demo(
    config: ConfigOpt = None, home: HomeOpt = None, verbose: VerboseOpt = False, force: ForceOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Run everything on the embedded default (tiny local models, chatterbot prompts, CPU)."""
    import time

    _env(config, home)
    from datetime import UTC, datetime

    from warehouse.home import resolve_home

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    _materialize(None, None, verbose, force, workers)
    home_dir = resolve_home()
    wall = time.perf_counter() - t0
    typer.echo(f"\nDemo finished in {wall:.0f}s. Warehouse: {home_dir}")
    from factory.summary import demo_summary
    from warehouse.home import home_url

    url = home_url()
    from assets.definitions import build_definitions
    from assets.io_manager import SIDE_OUTPUT

    graph = build_definitions().resolve_asset_graph()
    side = frozenset(k.to_python_identifier() for k in graph.get_all_asset_keys() if graph.get(k).metadata.get(SIDE_OUTPUT))
    from assets.config import config_option

    typer.echo(demo_summary(home_dir, since=started, wall_s=wall, tables=url if url != str(home_dir) else None,
                            side_outputs=side, config_option=config_option()))


Format = StrEnum("Format", {f: f for f in FORMATS})  # `factory sql --format`: a choice, checked before the query


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SQL query over the warehouse views.")],
    format: Annotated[Format, typer.Option("--format", "-f", case_sensitive=False, help="How to print the result.")] = Format.table,
    home: HomeOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to print in table format (csv and json print every row).")] = 50,
) -> None:
    """Query any table with DuckDB SQL (read-only)."""
    _env(None, home, home_use="read")
    import duckdb
    import polars as pl

    from warehouse.sql import QueryRefused
    from warehouse.store import Warehouse

    wh = Warehouse()
    try:
        df = wh.sql(query, fmt=format.value)
    except QueryRefused as exc:
        _fail(str(exc))
    except Exception as exc:  # duckdb errors: show the message, not a traceback
        message = str(exc)
        if isinstance(exc, duckdb.CatalogException) and "Table with name" in message:  # DuckDB suggests its own tables
            message = f"{message.splitlines()[0]} The warehouse's tables: {', '.join(wh.tables()) or 'none yet'}."
        _fail(f"query failed: {message}", 1)
    try:
        if format == "csv":
            text = df.write_csv()
        elif format == "json":
            text = df.write_json() + "\n"
        else:
            with pl.Config(tbl_rows=limit, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
                text = f"{df}\n"
    except (Exception, pl.exceptions.PanicException) as exc:  # a panic is a BaseException
        _fail(f"cannot print the result as {format.value}: {str(exc).splitlines()[0]}; cast that column to VARCHAR in the query", 1)
    sys.stdout.write(text)


@app.command()
def status(home: HomeOpt = None) -> None:
    """Each table: rows, languages, last run."""
    _env(None, home, home_use="read")
    from warehouse.status import table_status

    typer.echo(table_status())


@app.command()
def config(config: ConfigOpt = None) -> None:
    """Print the run config with every default filled in (validated), as YAML, with the teachers that will be
    used and local paths resolved."""
    import yaml

    _env(config, None, home_use="none")
    from assets.config import active_config, config_path
    from factory.generation.registry import without_api_base_userinfo

    cfg = active_config()
    shown = cfg.model_dump(mode="json")
    shown["teachers"] = [t.model_dump(mode="json") for t in cfg.resolved_teachers()]
    shown = without_api_base_userinfo(shown)
    typer.echo(f"# {config_path()}")
    if not cfg.teachers:
        typer.echo("# teachers: not configured, so the embedded pool's teachers for these languages (listed below)")
    typer.echo(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True))


@app.command()
def lineage(
    row_id: Annotated[str, typer.Argument(help="A pair (pr_), completion (c_), prompt (p_), checkpoint (ck_) or judgment (j_) id.")],
    home: HomeOpt = None,
) -> None:
    """Print the ancestry of a row: pair -> completions -> prompt, teachers, scores, runs."""
    _env(None, home, home_use="read")
    from warehouse.lineage import RowNotFound, trace

    try:
        typer.echo(trace(row_id))
    except RowNotFound as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def merge(
    config: Annotated[Path, typer.Argument(help="A mergekit-style YAML (merge_method, base_model, models, parameters, dtype).")],
    output_dir: Annotated[Path, typer.Argument(help="Where to write the merged Hugging Face model folder.")],
) -> None:
    """Merge models from a mergekit-style YAML (linear, slerp, ties, dare_ties, dare_linear), streaming."""
    import warnings

    # Only what the merge needs: no quiet_libraries() (it imports transformers and datasets, ~1 s).
    from training.merge.run import merge_from_yaml

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            info = merge_from_yaml(config, output_dir)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    for w in caught:  # the merge's own notes (an ignored or unused parameter), one line each
        typer.secho(f"warning: {w.message}", fg="yellow", err=True)
    typer.echo(f"merged {len(info.get('inputs', []))} models with {info.get('method')} into {info.get('output', output_dir)} "
               f"({info.get('n_tensors')} tensors, {info.get('seconds', 0):.1f}s)")
    if Path(sys.argv[0]).name == "factory":  # the console script: the model is written and closed, so skip
        sys.stdout.flush()                     # interpreter teardown (1-2 s with torch, dagster and polars loaded)
        sys.stderr.flush()
        os._exit(0)


@app.command()
def publish(
    push_to_hub: Annotated[str | None, typer.Option("--push-to-hub", help="Also upload each dataset to REPO (needs HF_TOKEN); REPO-sft for the SFT data.")] = None,
    config: ConfigOpt = None,
    home: HomeOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Write the SFT data and preference pairs as Hugging Face dataset folders (FACTORY_HOME/published)."""
    _env(config, home, home_use="read", offline=not push_to_hub)  # huggingface_hub reads HF_HUB_OFFLINE once
    from warehouse.publish import PublishError, hub_token
    from warehouse.publish import push_to_hub as push

    repos = {"preference_pairs": push_to_hub, "sft_data": f"{push_to_hub}-sft"} if push_to_hub else {}
    try:
        for repo in repos.values():  # before the local work: a bad repo id or no token is known now
            hub_token(repo)
    except PublishError as exc:
        _fail(str(exc))
    _materialize("published_datasets", None, verbose)
    from warehouse.home import resolve_home

    root = resolve_home() / "published"
    for name in ("preference_pairs", "sft_data"):
        typer.echo(f"{name}: {root / name}  (datasets.load_dataset('{root / name}'): every row; name=CONFIG for one config)")
    try:
        for name, repo in repos.items():
            typer.echo(push(root / name, repo))
    except PublishError as exc:
        _fail(str(exc))


@app.command()
def ui(
    config: ConfigOpt = None,
    home: HomeOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the Dagster UI on 127.0.0.1.")] = 3000,
) -> None:
    """Open the Dagster UI (`dagster dev`) on this home and config, with runs recorded in FACTORY_HOME/.dagster."""
    import socket

    with socket.socket() as probe:  # dagster dev keeps running when its web server cannot bind: check first
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds (TIME_WAIT is free)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            _fail(f"port {port} on 127.0.0.1 is taken ({exc.strerror}): pass --port with a free one")
    _env(config, home)
    from warehouse.home import resolve_home

    dagster_home = Path(os.environ.get("DAGSTER_HOME") or resolve_home() / ".dagster")
    dagster_home.mkdir(parents=True, exist_ok=True)  # dagster refuses a DAGSTER_HOME that does not exist yet
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("FACTORY_HOME", str(resolve_home()))
    exe = Path(sys.executable).with_name("dagster")
    typer.echo(f"Dagster UI on http://127.0.0.1:{port} (home {os.environ['FACTORY_HOME']}, runs in {dagster_home})")
    os.execv(str(exe), [str(exe), "dev", "-m", "assets.definitions", "--host", "127.0.0.1", "--port", str(port)])


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
