from __future__ import annotations

import polars as pl
import pytest

from factory.ids import pair_id
from warehouse.schemas import PREFERENCE_PAIRS, conform

DIALOGS = {
    "en": [("How are you?", "I am well, thank you.", "Banana."), ("What is your name?", "My name is Aya.", "No.")],
    "fr": [
        ("Comment vas-tu ?", "Je vais bien, merci.", "Banane."),
        ("Quel est ton nom ?", "Je m'appelle Aya.", "Non."),
    ],
    "zh-Hans": [("你好吗？", "我很好，谢谢。", "香蕉。")],
}


def _msg(role: str, content: str) -> list[dict]:
    return [{"role": role, "content": content}]


@pytest.fixture
def pairs() -> pl.DataFrame:
    rows = []
    for lang, items in DIALOGS.items():
        for k, (prompt, good, bad) in enumerate(items * 2):  # duplicates make shards spill
            pid = f"p_{lang}_{k}"
            chosen_id, rejected_id = f"c_{lang}_{k}_good", f"c_{lang}_{k}_bad"
            rows.append(
                {
                    "pair_id": pair_id(pid, "best_worst", 0, chosen_id, rejected_id),
                    "prompt_id": pid,
                    "language": lang,
                    "method": "best_worst",
                    "round": 0,
                    "prompt": _msg("user", prompt),
                    "chosen": _msg("assistant", good),
                    "rejected": _msg("assistant", bad),
                    "chosen_completion_id": chosen_id,
                    "rejected_completion_id": rejected_id,
                    "chosen_reward": 1.5,
                    "rejected_reward": -0.5,
                    "margin": 2.0,
                    "run_id": "run_test",
                }
            )
    return conform(pl.DataFrame(rows, schema=PREFERENCE_PAIRS), PREFERENCE_PAIRS)


@pytest.fixture
def online_pairs(pairs) -> pl.DataFrame:
    """Online DPO pairs as the online rounds write them: method `online`, round k, plus the
    round's held-out policy columns. Rounds 1 and 2, English and French only."""
    rows = []
    for k in (1, 2):
        part = pairs.filter(pl.col("language").is_in(["en", "fr"])).head(3 if k == 1 else 2)
        rows.append(
            part.with_columns(
                method=pl.lit("online"),
                round=pl.lit(k, dtype=pl.Int32),
                pair_id=pl.format("online{}_{}", pl.lit(k), pl.col("pair_id")),
                policy_heldout_reward=pl.lit(0.1 * k),
            )
        )
    return pl.concat(rows)


SOURCE_INFO = {
    "run_ids": ["run_test"],
    "teachers": ["tiny_west", "tiny_east"],
    "reward_model": "ck_rm",
    "strategy": "reward_routing",
    "code_version": "0.0.test",
}
