"""Row lineage: follow ids from any row back to what made it.

pair -> chosen and rejected completions -> prompt, teachers, scores (reward model), runs;
completion -> prompt, scores; checkpoint -> parent checkpoints and dataset versions;
judgment -> the checkpoints it compared.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import polars as pl

from warehouse.store import Warehouse


@dataclass
class Node:
    label: str
    children: list[Node] = field(default_factory=list)

    def render(self, prefix: str = "", last: bool = True, root: bool = True) -> str:
        lines = [self.label if root else f"{prefix}{'└── ' if last else '├── '}{self.label}"]
        child_prefix = "" if root else prefix + ("    " if last else "│   ")
        for i, child in enumerate(self.children):
            lines.append(child.render(child_prefix, i == len(self.children) - 1, False))
        return "\n".join(lines)


def _one(wh: Warehouse, table: str, column: str, value: str) -> dict | None:
    if not wh.has(table):
        return None
    df = wh.read_table(table).filter(pl.col(column) == value)
    return df.row(0, named=True) if df.height else None


def _short(text: str | None, n: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def _run(wh: Warehouse, run_id: str | None) -> Node:
    if not run_id or not wh.has("lineage"):
        return Node(f"run {run_id}")
    rows = wh.read_table("lineage").filter(pl.col("run_id") == run_id)
    if not rows.height:
        return Node(f"run {run_id}")
    r = rows.row(0, named=True)
    step = f"{r['asset']}[{r['partition']}]" if r["partition"] else r["asset"]  # an unpartitioned step: no []
    return Node(f"run {run_id[:8]} ({step}, code {r['code_version']}, {r['finished_at']:%Y-%m-%d %H:%M})")


def prompt_node(wh: Warehouse, pid: str) -> Node:
    row = _one(wh, "prompts", "prompt_id", pid)
    if row is None:
        return Node(f"prompt {pid} (not found)")
    return Node(
        f"prompt {pid} [{row['language']}, {row['split']}] {_short(row['text'])!r}",
        [Node(f"source {row['source']} ({row['origin']})"), _run(wh, row["run_id"])],
    )


def completion_node(wh: Warehouse, cid: str) -> Node:
    row = _one(wh, "generations", "completion_id", cid)
    if row is None:
        return Node(f"completion {cid} (not found)")
    node = Node(
        f"completion {cid} by teacher {row['teacher']} ({row['backend']}, sample {row['sample_index']}, "
        f"{row['n_tokens']} tokens, {row['finish_reason']}) {_short(row['text'])!r}"
    )
    if wh.has("scores"):
        for s in wh.read_table("scores").filter(pl.col("completion_id") == cid).iter_rows(named=True):
            node.children.append(Node(
                f"score by {s['scorer']}: reward {s['reward']:.3f} (z {s['reward_z']:.2f}), "
                f"detected {s['detected_language']}, language_match={s['language_match']}"
            ))
    node.children += [prompt_node(wh, row["prompt_id"]), _run(wh, row["run_id"])]
    return node


def pair_node(wh: Warehouse, pair_id: str) -> Node:
    row = _one(wh, "preference_pairs", "pair_id", pair_id)
    if row is None:
        return Node(f"pair {pair_id} (not found)")
    rule = {"language": ", rule language: chosen in the prompt's language, rejected not, whatever their rewards",
            "translation": ", rule translation"}.get(row.get("rule") or "", "")
    return Node(
        f"pair {pair_id} [{row['language']}, {row['method']}, round {row['round']}{rule}] "
        f"chosen {row['chosen_reward']:.3f} vs rejected {row['rejected_reward']:.3f}",
        [
            Node("chosen", [completion_node(wh, row["chosen_completion_id"])]),
            Node("rejected", [completion_node(wh, row["rejected_completion_id"])]),
            _run(wh, row["run_id"]),
        ],
    )


def checkpoint_node(wh: Warehouse, ck: str, depth: int = 0) -> Node:
    row = _one(wh, "checkpoints", "checkpoint_id", ck)
    if row is None:
        return Node(f"checkpoint {ck} (not found)")
    node = Node(f"checkpoint {ck} {row['name']} [{row['stage']}] at {row['path']}")
    datasets = json.loads(row["datasets"] or "{}")
    for name, value in sorted(datasets.items()):
        node.children.append(Node(_dataset_line(name, value)))
    if depth < 12:
        node.children += [checkpoint_node(wh, p, depth + 1) for p in row["parents"] or []]
    node.children.append(_run(wh, row["run_id"]))
    return node


def _dataset_line(name: str, value) -> str:
    """A checkpoint's `datasets` entry: a table's data version, or what was taken of it (languages, methods, a strategy)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16}", value):
        return f"trained on {name} version {value}"
    return f"{name}: {', '.join(map(str, value)) if isinstance(value, list) else value}"


def judgment_node(wh: Warehouse, jid: str) -> Node:
    if (row := _one(wh, "judgments", "judgment_id", jid)) is None:
        return Node(f"judgment {jid} (not found)")
    title = f"judgment {jid} [{row['language']}, judge {row['judge']}]: {row['verdict']} for {row['stage']}"
    models = [Node(side, [checkpoint_node(wh, row[side])]) for side in ("model", "baseline")]
    return Node(title, [*models, prompt_node(wh, row["prompt_id"])])


PREFIXES = {"pr_": pair_node, "c_": completion_node, "p_": prompt_node, "ck_": checkpoint_node, "j_": judgment_node}


class RowNotFound(LookupError):
    """The id has a known prefix but no row in its table."""


def trace(row_id: str, wh: Warehouse | None = None) -> str:
    """The ancestry of a pair, completion, prompt, checkpoint or judgment id, as a tree.
    Raises RowNotFound when the row itself does not exist (missing ancestors are shown in the tree),
    CorruptTable when a table it needs cannot be read; unreadable lineage files are set aside
    and named in a warning line under the tree."""
    wh = wh or Warehouse()
    for prefix, fn in PREFIXES.items():
        if row_id.startswith(prefix):
            node = fn(wh, row_id)
            if node.label.endswith("(not found)"):
                raise RowNotFound(f"{node.label}: no such row in {wh.home}")
            # Lineage files that could not be read were set aside; say so under the tree.
            return node.render() + "".join(f"\nwarning: {p}" for p in wh.problems)
    raise ValueError(f"unrecognised id {row_id!r}: expected a prefix among {', '.join(PREFIXES)}")
