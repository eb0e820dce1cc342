"""Publish a table as a Hugging Face dataset folder, and push it to a hub when credentials exist.

Layout: data/<config>/<split>-0000i-of-0000N.parquet (one config per value of
`config_column`, a column name or a polars expression, sharded by
`max_rows_per_shard`) and a README.md dataset card whose YAML front matter
declares the configs. An `all` config, the default, reads every config's files
(no copy), so `datasets.load_dataset(folder)` loads every row and
`datasets.load_dataset(folder, name=config)` one config. TRL trains on
preference pairs as they are (prompt/chosen/rejected message lists).

Online DPO pairs (method `online`) are on-policy data of one round's model, so
`pair_configs` gives them their own configs (`online_round_<k>`) instead of
mixing them into the language configs; the card's config table lists the
languages, methods and rounds in every config.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

SIZE_BUCKETS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
]


_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ALL_CONFIG = "all"
ONLINE_METHOD = "online"
ONLINE_PREFIX = "online_round_"
# Columns whose distinct values the card lists per config, when the data has them.
SUMMARY_COLUMNS = ("language", "method", "round", "strategy")
MAX_LISTED = 8


def pair_configs(config_column: str | None = "language") -> pl.Expr:
    """Config of each preference pair: `online_round_<k>` for online pairs (round k's own data),
    else the value of `config_column` (or `offline` when None).

    Reads PREFERENCE_PAIRS columns method, round and `config_column`.
    """
    offline = pl.col(config_column).cast(pl.String) if config_column else pl.lit("offline")
    return (
        pl.when(pl.col("method") == ONLINE_METHOD)
        .then(pl.format(ONLINE_PREFIX + "{}", pl.col("round")))
        .otherwise(offline)
    )


class PublishConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "aya-factory-preference-pairs"
    description: str = "Multilingual preference pairs built by the preference-data factory."
    config_column: str | None = "language"
    licenses: list[str] = Field(default_factory=lambda: ["bsd-3-clause"])  # chatterbot-corpus is BSD
    task_categories: list[str] = Field(default_factory=lambda: ["text-generation"])
    split: str = "train"
    max_rows_per_shard: int = 100_000
    repo_id: str | None = None
    private: bool = True


class PublishError(RuntimeError):
    pass


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def _size_category(n: int) -> str:
    return next((label for limit, label in SIZE_BUCKETS if n < limit), "n>10M")


def _hub_language(code: str) -> str:
    # The hub's `language` field takes ISO 639 codes; scripts go in config names (zh-Hans, zh-Hant).
    return code.split("-")[0].lower()


def _plain_arrow(df: pl.DataFrame):
    """Arrow table with large_string/large_list/string_view turned into string/list, which every reader takes."""
    import pyarrow as pa

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        if pa.types.is_large_list(t) or pa.types.is_list(t) or pa.types.is_list_view(t):
            return pa.list_(pa.field("item", plain(t.value_type)))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
        return t

    table = df.to_arrow()
    schema = pa.schema([pa.field(f.name, plain(f.type), f.nullable) for f in table.schema])
    return table.cast(schema)


def _write_shards(df: pl.DataFrame, folder: Path, split: str, max_rows: int) -> list[str]:
    import pyarrow.parquet as pq

    n_shards = max(1, math.ceil(df.height / max_rows))
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_shards):
        name = f"{split}-{i:05d}-of-{n_shards:05d}.parquet"
        pq.write_table(_plain_arrow(df.slice(i * max_rows, max_rows)), folder / name)
        names.append(name)
    return names


def _files_digest(paths: list[Path]) -> str:
    """sha256 over the files' bytes, in order: 16 hex digits."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _config_order(config: str) -> tuple:
    """Data configs by name, then the online rounds by round number."""
    round_ = config.removeprefix(ONLINE_PREFIX)
    return (1, int(round_), "") if config.startswith(ONLINE_PREFIX) and round_.isdigit() else (0, 0, config)


def _values(part: pl.DataFrame, column: str) -> str:
    values = sorted({str(v) for v in part[column].unique().to_list() if v is not None})
    shown = ", ".join(values[:MAX_LISTED])
    return shown + (f", ... ({len(values)} values)" if len(values) > MAX_LISTED else "")


def config_summary(parts: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per config: rows, and the distinct languages, methods, rounds and strategies in it."""
    first = next(iter(parts.values()))
    listed = [c for c in SUMMARY_COLUMNS if c in first.columns]
    rows = [{"config": c, "rows": p.height, **{col: _values(p, col) for col in listed}} for c, p in parts.items()]
    return pl.DataFrame(rows, schema={"config": pl.String, "rows": pl.Int64, **dict.fromkeys(listed, pl.String)})


def _rows_of(summary: pl.DataFrame, config: str) -> int:
    return int(summary.filter(pl.col("config") == config)["rows"][0])


def dataset_card(
    *,
    name: str,
    description: str,
    licenses: list[str],
    task_categories: list[str],
    split: str,
    config_column: str | None,
    summary: pl.DataFrame,
    languages: list[str],
    columns: dict[str, str],
    source_info: dict[str, Any],
    digests: dict[str, str] | None = None,
) -> str:
    """README.md text: YAML front matter (configs, language, license, ...) and a readable card body.

    `summary` is `config_summary` of the configs as written, in card order; an `all` row among
    them becomes the default config, reading every other config's files. `digests` (config -> a
    digest of its data files) go into each config's `description`: the `datasets` library keys its
    cache of a local folder by the card's configs, not by the folder's path or files, so without
    them a second folder of the same layout (another home's, or a republished one) loaded the
    first one's cached rows.
    """
    import yaml

    configs = summary["config"].to_list()
    parts = [c for c in configs if c != ALL_CONFIG]
    default = ALL_CONFIG if ALL_CONFIG in configs else configs[0]
    total = int(summary.filter(pl.col("config").is_in(parts))["rows"].sum())

    def files(config: str) -> str | list[str]:
        if config == ALL_CONFIG:
            return [f"data/{c}/{split}-*.parquet" for c in parts]
        return f"data/{config}/{split}-*.parquet"

    meta: dict[str, Any] = {"pretty_name": name}
    if languages:
        meta["language"] = sorted({_hub_language(c) for c in languages})
    meta["license"] = licenses[0] if len(licenses) == 1 else licenses
    meta["size_categories"] = [_size_category(total)]
    meta["task_categories"] = task_categories
    meta["configs"] = [
        {
            "config_name": c,
            "data_files": [{"split": split, "path": files(c)}],
            **({"description": f"{_rows_of(summary, c)} rows; data sha256 {digests[c]}"} if digests and c in digests else {}),
            **({"default": True} if c == default else {}),
        }
        for c in configs
    ]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    split_by = {None: "", "": ""}.get(config_column, f", one per `{config_column}`")
    some = next((c for c in parts if c != default), default)
    listed = summary.columns
    lines = [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        description,
        "",
        f"{total} rows in {len(parts)} config(s){split_by}."
        + (f" `{ALL_CONFIG}`, the default config, holds every row." if ALL_CONFIG in configs else ""),
        *(
            [
                "",
                f"Online DPO pairs (method `{ONLINE_METHOD}`, sampled from round k's policy and ranked by the reward "
                f"model) are in their own configs `{ONLINE_PREFIX}<k>`, not in the other configs.",
            ]
            if any(c.startswith(ONLINE_PREFIX) for c in parts)
            else []
        ),
        "",
        "## Configs",
        "",
        "| " + " | ".join(listed) + " |",
        "|" + "|".join("---:" if c == "rows" else "---" for c in listed) + "|",
        *["| " + " | ".join(_cell(v) for v in row) + " |" for row in summary.iter_rows()],
        "",
        "## Columns",
        "",
        "| column | type |",
        "|---|---|",
        *[f"| {c} | `{t}` |" for c, t in columns.items()],
        "",
        "## Provenance",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| {k} | {_cell(v)} |" for k, v in source_info.items()],
        "",
        "## How to load",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("<this folder or repo id>", split="{split}")  # config {default}',
        *(
            [f'ds = load_dataset("<this folder or repo id>", name="{some}", split="{split}")']
            if some != default
            else []
        ),
        "```",
        "",
        "Preference pairs (`prompt`, `chosen`, `rejected` message lists) train as they are with TRL's `DPOTrainer`.",
        "",
        f"License: {', '.join(licenses)}.",
        "",
    ]
    return "\n".join(lines)


def publish_dataset(
    df: pl.DataFrame,
    out_dir: str | Path,
    *,
    name: str,
    config_column: str | pl.Expr | None = "language",
    description: str = "",
    licenses: list[str],
    source_info: dict[str, Any],
    split: str = "train",
    max_rows_per_shard: int = 100_000,
    task_categories: list[str] | None = None,
) -> Path:
    """Write `df` as a Hugging Face dataset folder at `out_dir` (atomically: temp dir, then rename).

    One config per distinct value of `config_column` (a column name, or an expression such as
    `pair_configs()`), plus `all`, the default config, over every row; a single "default" config
    when None. Rows with a null config value are an error, not silently dropped.
    """
    if df.is_empty():
        raise ValueError("refusing to publish an empty dataset")
    if max_rows_per_shard < 1:
        raise ValueError("max_rows_per_shard must be >= 1")
    if config_column is not None:
        if isinstance(config_column, str) and config_column not in df.columns:
            raise ValueError(f"config column {config_column!r} not in {df.columns}")
        expr = pl.col(config_column) if isinstance(config_column, str) else config_column
        keys = df.select(expr.cast(pl.String).alias("config"))["config"]
        nulls = keys.null_count()
        if nulls:
            what = repr(config_column) if isinstance(config_column, str) else "config"
            raise ValueError(f"{nulls} rows have a null {what}; quarantine them before publishing")
        names = sorted(keys.unique().to_list(), key=_config_order)
        parts = {c: df.filter(keys == c) for c in names}
        unsafe = [c for c in parts if not _CONFIG_NAME.fullmatch(c)]
        if unsafe:
            raise ValueError(f"config names must match {_CONFIG_NAME.pattern} (they become folder names): {unsafe}")
        if ALL_CONFIG in parts:
            raise ValueError(f"{ALL_CONFIG!r} is the config of every row; no data value may take that name")
        summary = config_summary({ALL_CONFIG: df, **parts})
    else:
        parts = {"default": df}
        summary = config_summary(parts)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: its 0700 would stay on the published folder; this one follows the umask
    try:
        written = {}
        for config, part in parts.items():
            folder = tmp / "data" / config
            written[config] = [folder / n for n in _write_shards(part, folder, split, max_rows_per_shard)]
        digests = {c: _files_digest(paths) for c, paths in written.items()}
        if config_column is not None:  # `all` reads every config's files
            digests[ALL_CONFIG] = _files_digest([p for c in parts for p in written[c]])
        card = dataset_card(
            name=name,
            description=description,
            licenses=licenses,
            task_categories=task_categories or ["text-generation"],
            split=split,
            config_column=config_column if isinstance(config_column, str) else "",
            summary=summary,
            languages=sorted(df["language"].drop_nulls().unique().to_list()) if "language" in df.columns else [],
            columns={c: str(t) for c, t in df.schema.items()},
            source_info=source_info,
            digests=digests,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        old = out.with_name(out.name + ".old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def hub_token(repo_id: str, token: str | None = None) -> str:
    """The token for pushing to `repo_id`: `token`, else the HF_TOKEN environment variable. Checked
    before any work: PublishError when the repo id is not one the hub takes, or there is no token."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as exc:
        raise PublishError(f"{repo_id!r} is not a hub repo id (ORG/NAME): {exc}") from None
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise PublishError(f"cannot push to {repo_id}: no Hugging Face token; set HF_TOKEN to a write token")
    return token


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None, private: bool = True) -> str:
    """Upload a published folder to a Hugging Face dataset repo; returns the commit URL.

    The token comes from `token` or the HF_TOKEN environment variable (hub_token); without one,
    or when the hub or the connection fails (offline mode, a refused token), this raises
    PublishError with the hub's message in one line.
    """
    token = hub_token(repo_id, token)
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise PublishError(f"{folder} is not a published dataset folder (no README.md): publish it first (`factory publish`)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="dataset", commit_message="Publish dataset"
        )
    except Exception as exc:  # the network boundary: whatever the hub or the connection says, as one line
        reason = next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__
        raise PublishError(f"cannot push {folder} to {repo_id}: {reason}") from exc
    return str(getattr(info, "commit_url", info))
