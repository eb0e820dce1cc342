"""Decontamination: drop training prompts that match or overlap a held-out prompt.

Held out: the eval split (what the win rates are measured on) and the dev split (what the
online rounds, the offline DPO beta and the merge are chosen on): a training prompt that is
one of them, or nearly, would let training see what those decisions are judged on. (On the
default demo, before dev was included, 49 of 1,391 SFT rows matched a dev prompt.)

Three tests, strongest first, each naming the held-out prompt it matched:
1. exact match (after stripping surrounding whitespace);
2. normalised match: NFKC, casefold, and every punctuation, separator and
   control character removed (so "What is AI?" == "what is ai");
3. character n-gram overlap over the normalised text, as the overlap
   coefficient |A & B| / min(|A|, |B|) >= threshold.

Why characters, not words: chatterbot prompts are short and a third of the
languages are written without spaces (zh, ja) or with rich morphology, so word
n-grams would be empty or never match. Character n-grams need no tokenizer.
The n is per script: `ngram` (5) for alphabetic text, `ngram_cjk` (2) when most
characters are Han, kana or Hangul, where one character carries about a word.
The overlap coefficient catches an eval prompt embedded in a longer training
prompt; `min_ngrams` keeps a very short prompt ("hi") from matching every
prompt that contains it, so short texts are only caught by tests 1 and 2.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

import polars as pl
from pydantic import BaseModel, ConfigDict


class DecontamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ngram: int = 5  # characters, alphabetic scripts
    ngram_cjk: int = 2  # characters, Han / kana / Hangul
    threshold: float = 0.6  # overlap coefficient at or above which a prompt is contaminated
    min_ngrams: int = 3  # both texts need this many n-grams for the overlap test
    text_column: str = "text"


def normalize(text: str) -> str:
    """NFKC, casefold, with punctuation (P*), separators (Z*) and controls (C*) removed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] not in "PZC")


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF


def char_ngrams(norm: str, cfg: DecontamConfig) -> set[str]:
    """The set of character n-grams of a normalised text (n by script); the whole text if shorter."""
    if not norm:
        return set()
    n = cfg.ngram_cjk if sum(map(_is_cjk, norm)) * 2 > len(norm) else cfg.ngram
    if len(norm) <= n:
        return {norm}
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


class EvalIndex:
    """Eval prompts indexed for exact, normalised and n-gram lookups. `names` (e.g. "p_12 [de]")
    say which eval prompt a match is; by default its position ("#3")."""

    def __init__(self, eval_texts: list[str], cfg: DecontamConfig, names: list[str] | None = None):
        if names is not None and len(names) != len(eval_texts):
            raise ValueError(f"{len(names)} names for {len(eval_texts)} eval texts")
        self.cfg = cfg
        self.texts = eval_texts
        self.names = names
        self.exact = {t.strip(): i for i, t in reversed(list(enumerate(eval_texts)))}
        norms = [normalize(t) for t in eval_texts]
        self.normalised = {n: i for i, n in reversed(list(enumerate(norms))) if n}
        self.grams = [char_ngrams(n, cfg) for n in norms]
        self.postings: dict[str, list[int]] = {}
        for i, grams in enumerate(self.grams):
            for g in grams:
                self.postings.setdefault(g, []).append(i)

    def _name(self, i: int) -> str:
        text = self.texts[i].strip().replace("\n", " ")
        return f"held-out prompt {self.names[i] if self.names else f'#{i}'} {text[:80]!r}"

    def match(self, text: str) -> str | None:
        """The contamination reason for `text`, or None if it is clean."""
        if (i := self.exact.get(text.strip())) is not None:
            return f"exact match of {self._name(i)}"
        norm = normalize(text)
        if (i := self.normalised.get(norm)) is not None:
            return f"normalised match of {self._name(i)}"
        grams = char_ngrams(norm, self.cfg)
        if len(grams) < self.cfg.min_ngrams:
            return None
        hits = Counter(i for g in grams for i in self.postings.get(g, ()))
        best, best_score = None, 0.0
        for i, h in hits.items():
            if len(self.grams[i]) < self.cfg.min_ngrams:
                continue
            score = h / min(len(grams), len(self.grams[i]))
            if score > best_score or (score == best_score and best is not None and i < best):
                best, best_score = i, score
        if best is not None and best_score >= self.cfg.threshold:
            return f"char n-gram overlap {best_score:.2f} >= {self.cfg.threshold:.2f} with {self._name(best)}"
        return None


def decontaminate(
    df: pl.DataFrame, eval_texts: list[str], cfg: DecontamConfig | None = None, *, eval_names: list[str] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split `df` [prompt_id, text, ...] into (kept rows, quarantine [row_key, reason, payload]).

    `eval_texts` should be every eval prompt of every language, not only the rows' own: the
    same text under another language label (zh-Hans / zh-Hant, de / nl) is contamination too.
    `eval_names` name them in the reasons (default: their position)."""
    cfg = cfg or DecontamConfig()
    index = EvalIndex(eval_texts, cfg, eval_names)
    reasons = [index.match(t or "") for t in df[cfg.text_column].to_list()]
    flagged = df.with_columns(pl.Series("_reason", reasons, dtype=pl.String))
    hits = flagged.filter(pl.col("_reason").is_not_null())
    quarantine = hits.select(
        pl.col("prompt_id").alias("row_key"),
        pl.format("contaminated: {}", pl.col("_reason")).alias("reason"),
        pl.struct(pl.exclude("_reason")).struct.json_encode().alias("payload"),
    )
    return flagged.filter(pl.col("_reason").is_null()).drop("_reason"), quarantine


HELD_OUT = ("eval", "dev")  # the splits training must not see


def eval_prompts(stored: pl.DataFrame | None, prompts: pl.DataFrame) -> pl.DataFrame:
    """Every held-out (eval and dev) prompt of every language [prompt_id, language, text, split]: the
    stored prompts table's and those in `prompts`. The same text can carry two language labels
    (zh-Hans and zh-Hant, de and nl), and a partitioned step's `prompts` holds only its own language,
    so training rows are compared against all of them."""
    cols = ["prompt_id", "language", "text", "split"]
    frames = [df.filter(pl.col("split").is_in(HELD_OUT)).select(cols) for df in (stored, prompts) if df is not None]
    return pl.concat(frames, how="vertical_relaxed").unique("prompt_id", keep="first", maintain_order=True)


def _against(rows: pl.DataFrame, prompts: pl.DataFrame, evals: pl.DataFrame, cfg: DecontamConfig):
    """decontaminate() of training rows [prompt_id, ...] by their prompt's text against `evals`."""
    with_text = rows.join(prompts.select("prompt_id", "text"), on="prompt_id", how="left")
    splits = evals["split"] if "split" in evals.columns else pl.repeat("eval", evals.height, eager=True)
    names = [f"{pid} [{lang}{'' if split == 'eval' else ', ' + split}]"
             for pid, lang, split in zip(evals["prompt_id"], evals["language"], splits, strict=True)]
    kept, hits = decontaminate(with_text, evals["text"].to_list(), cfg, eval_names=names)
    return with_text, kept, hits


def decontamination_gate(
    rows: pl.DataFrame, prompts: pl.DataFrame, evals: pl.DataFrame, cfg: DecontamConfig, enabled: bool = True
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Training rows without the contaminated ones, and the removed rows as quarantine. Disabled, every
    row is kept (the blocking `decontaminated` checks then stop training downstream)."""
    with_text, kept, hits = _against(rows, prompts, evals, cfg)
    if not enabled:
        kept, hits = with_text, hits.clear()
    return kept.drop("text"), hits


def contamination_report(rows: pl.DataFrame, prompts: pl.DataFrame, evals: pl.DataFrame, cfg: DecontamConfig) -> dict:
    """Re-verify written training rows against every eval prompt: contaminated rows by text, rows
    whose prompt id is an eval prompt's, and up to five reasons. Clean when both counts are 0."""
    _, _, hits = _against(rows.select("prompt_id"), prompts.with_columns(pl.col("text").fill_null("")), evals, cfg)
    in_eval = rows.filter(pl.col("prompt_id").is_in(evals["prompt_id"].to_list())).height
    return {"contaminated_rows": hits.height, "eval_prompt_ids": in_eval, "examples": hits["reason"].head(5).to_list()}
