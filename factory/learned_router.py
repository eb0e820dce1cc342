"""Learned routing: predict reward_routing's winning teacher from the prompt text alone,
so that at scale only the predicted teacher has to generate.

Features are hashed character n-grams (1..3 by default) of the NFKC-casefolded
text: they need no tokenizer, work for every script including CJK, and carry
the language (the strongest signal for which cluster teacher wins). The model is
a multinomial logistic regression trained by full-batch gradient descent in
numpy: deterministic, no extra dependency.

Train/holdout split is by a stable hash of prompt_id (`router_split`): the
router is fitted on the "fit" share of the training prompts and evaluated only
on the "holdout" share it never saw.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from factory.routing import RoutingConfig, best_mean_teacher, eligible, reward_routing


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ngram_min: int = 1
    ngram_max: int = 3
    n_features: int = 4096  # hash buckets; dense float32 rows, fine for up to ~1e5 prompts
    epochs: int = 300
    learning_rate: float = 2.0
    l2: float = 1e-4
    fit_fraction: float = 0.5  # share of prompt ids (by hash) the router is fitted on
    seed: int = 0


def router_split(prompt_id: str, cfg: RouterConfig) -> str:
    """'fit' or 'holdout', a stable function of (seed, prompt_id)."""
    h = hashlib.blake2b(f"router:{cfg.seed}:{prompt_id}".encode(), digest_size=8).digest()
    return "fit" if int.from_bytes(h, "big") / 2**64 < cfg.fit_fraction else "holdout"


def featurize(texts: list[str], cfg: RouterConfig) -> np.ndarray:
    """Hashed char n-gram counts, log-scaled and L2-normalised: [len(texts), n_features] float32."""
    x = np.zeros((len(texts), cfg.n_features), dtype=np.float32)
    for i, text in enumerate(texts):
        t = " " + unicodedata.normalize("NFKC", text).casefold().strip() + " "
        for n in range(cfg.ngram_min, cfg.ngram_max + 1):
            for j in range(len(t) - n + 1):
                x[i, zlib.crc32(t[j : j + n].encode("utf-8")) % cfg.n_features] += 1.0
    x = np.log1p(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class Router:
    teachers: list[str]
    weights: np.ndarray  # [n_features, n_teachers]
    bias: np.ndarray  # [n_teachers]
    cfg: RouterConfig = field(default_factory=RouterConfig)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        logits = featurize(texts, self.cfg) @ self.weights + self.bias
        return _softmax(logits)

    def predict(self, texts: list[str]) -> list[str]:
        """The predicted winning teacher for each prompt text."""
        if not texts:
            return []
        return [self.teachers[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, weights=self.weights, bias=self.bias, meta=json.dumps({"teachers": self.teachers, "cfg": self.cfg.model_dump()}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Router:
        data = np.load(path)
        meta = json.loads(str(data["meta"]))
        return cls(meta["teachers"], data["weights"], data["bias"], RouterConfig(**meta["cfg"]))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def train_router(prompts_text_by_id: dict[str, str], winners: pl.DataFrame, cfg: RouterConfig | None = None) -> Router:
    """Fit on the 'fit' split of `winners` [prompt_id, teacher] (reward_routing selections)."""
    cfg = cfg or RouterConfig()
    rows = [
        (prompts_text_by_id[p], t)
        for p, t in zip(winners["prompt_id"].to_list(), winners["teacher"].to_list(), strict=True)
        if p in prompts_text_by_id and router_split(p, cfg) == "fit"
    ]
    if not rows:
        raise ValueError("train_router: no winner in the fit split has a prompt text")
    teachers = sorted({t for _, t in rows})
    x = featurize([text for text, _ in rows], cfg)
    y = np.zeros((len(rows), len(teachers)), dtype=np.float32)
    y[np.arange(len(rows)), [teachers.index(t) for _, t in rows]] = 1.0
    w = np.zeros((cfg.n_features, len(teachers)), dtype=np.float32)
    b = np.log(y.mean(axis=0) + 1e-6).astype(np.float32)  # start at the class prior
    for _ in range(cfg.epochs):
        grad = (_softmax(x @ w + b) - y) / len(rows)
        w -= cfg.learning_rate * (x.T @ grad + cfg.l2 * w)
        b -= cfg.learning_rate * grad.sum(axis=0)
    return Router(teachers, w, b, cfg)


def evaluate_router(
    router: Router,
    prompts_text_by_id: dict[str, str],
    scored: pl.DataFrame,
    cfg: RouterConfig | None = None,
    routing: RoutingConfig | None = None,
) -> dict:
    """Score the router on holdout prompts only, against reward_routing (oracle) and a random teacher.

    Rewards are those of the teacher's sample `routing.sample_index` (one call to that teacher);
    `random` is the expected reward of a uniformly random teacher's sample. Since rewards can be
    negative, `recovered` = (router - random) / (oracle - random): 1 matches reward_routing,
    0 is no better than random. `generations_saved` = 1 - 1/n_teachers generation calls.
    """
    cfg = cfg or router.cfg
    routing = routing or RoutingConfig()
    ids = [p for p in scored["prompt_id"].unique().to_list() if p in prompts_text_by_id and router_split(p, cfg) == "holdout"]
    hold = scored.filter(pl.col("prompt_id").is_in(ids))
    oracle, _ = reward_routing(hold.lazy(), routing)
    oracle = oracle.collect().select("prompt_id", pl.col("teacher").alias("oracle_teacher"), pl.col("reward").alias("oracle"))
    samples = hold.filter(pl.col("sample_index") == routing.sample_index).with_columns(eligible(routing).alias("_ok"))
    random = samples.group_by("prompt_id").agg(pl.col("reward").mean().alias("random"))
    pids = oracle["prompt_id"].to_list()
    picks = pl.DataFrame({"prompt_id": pids, "teacher": router.predict([prompts_text_by_id[p] for p in pids])}, schema={"prompt_id": pl.String, "teacher": pl.String})
    single = best_mean_teacher(scored)
    single_rewards = samples.filter(pl.col("teacher") == single).select("prompt_id", pl.col("reward").alias("single"))
    table = (
        oracle.join(picks, on="prompt_id")
        .join(samples.select("prompt_id", "teacher", "reward", "_ok"), on=["prompt_id", "teacher"], how="left")
        .join(random, on="prompt_id", how="left")
        .join(single_rewards, on="prompt_id", how="left")
    )
    scoreable = table.filter(pl.col("reward").is_not_null())
    n_teachers = hold["teacher"].n_unique()
    k = hold.group_by("prompt_id", "teacher").agg(pl.len()).get_column("len").max() if hold.height else 0
    means = {c: _mean(scoreable[c]) for c in ("reward", "random", "oracle", "single")}
    gap = None if means["oracle"] is None or means["random"] is None else means["oracle"] - means["random"]
    return {
        "n_holdout": len(pids),
        "n_scored": scoreable.height,
        "n_missing_pick": table.height - scoreable.height,
        "accuracy": _mean((table["teacher"] == table["oracle_teacher"]).cast(pl.Float64)),
        "off_language_share": _mean((~scoreable["_ok"]).cast(pl.Float64)),
        "mean_reward_router": means["reward"],
        "mean_reward_random": means["random"],
        "mean_reward_oracle": means["oracle"],
        "mean_reward_single_teacher": means["single"],
        "single_teacher": single,
        "recovered": None if not gap or abs(gap) < 1e-12 else (means["reward"] - means["random"]) / gap,
        "n_teachers": n_teachers,
        "generations_saved": 1 - 1 / n_teachers if n_teachers else 0.0,
        "completions_saved": 1 - 1 / (n_teachers * k) if n_teachers and k else 0.0,
    }


def _mean(s: pl.Series) -> float | None:
    s = s.drop_nulls()
    return float(s.mean()) if s.len() else None
