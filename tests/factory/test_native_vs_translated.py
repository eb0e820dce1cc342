from __future__ import annotations

import polars as pl

from factory.generation.base import Completion, SamplingConfig
from factory.ids import completion_id
from factory.pairs import NativeVsTranslatedConfig, check_pairs, native_vs_translated
from factory.routing import select
from warehouse.schemas import GENERATIONS, PREFERENCE_PAIRS


class TaggingBackend:
    """A deterministic fake backend: answers '<name>(<last user message>)' and records calls."""

    def __init__(self, name: str, fail_on: str | None = None):
        self.name = name
        self.fail_on = fail_on
        self.calls: list[str] = []

    def generate(self, conversations, sampling: SamplingConfig, n: int = 1):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            self.calls.append(text)
            if self.fail_on and self.fail_on in text:
                out.append([Completion("", 0, "error")] * n)
            else:
                out.append([Completion(f"{self.name}({text})", len(text.split()), "stop", 0.01)] * n)
        return out


class Translator(TaggingBackend):
    """Pretends to translate: tags the text with the target language taken from the template."""

    def generate(self, conversations, sampling, n=1):
        res = super().generate(conversations, sampling, n)
        out = []
        for conv, comps in zip(conversations, res, strict=True):
            msg = conv[-1]["content"]
            target = msg.split(" to ")[1].split(".")[0]
            body = msg.split("\n\n", 1)[1]
            out.append([Completion(f"[{target}] {body}", 3, "stop") if c.finish_reason != "error" else c for c in comps])
        return out


def best(scored, prompts):
    sel, _ = select(scored, ["reward_routing"])
    return sel.join(scored.select("completion_id", "text"), on="completion_id")


def test_mechanics_translate_answer_translate_back(scored, prompts):
    weak, tr = TaggingBackend("weak"), Translator("mt")
    pairs, gens, q = native_vs_translated(best(scored, prompts), prompts, weak, tr, run_id="r")
    assert list(pairs.columns[: len(PREFERENCE_PAIRS)]) == list(PREFERENCE_PAIRS)
    assert list(gens.columns[: len(GENERATIONS)]) == list(GENERATIONS)
    de = pairs.filter(pl.col("language") == "de").row(0, named=True)
    # prompt -> English -> weak answer in English -> back into German
    assert weak.calls[0] == "[English] Wie ist das Wetter heute?"
    assert de["rejected"][0]["content"] == "[German] weak([English] Wie ist das Wetter heute?)"
    assert de["chosen"][0]["content"] == "Es ist heute sonnig."
    assert de["chosen_reward"] == 3.0 and de["rejected_reward"] is None
    g = gens.filter(pl.col("prompt_id") == de["prompt_id"]).row(0, named=True)
    assert g["teacher"] == "weak+translate" and g["completion_id"] == de["rejected_completion_id"]
    cfg = NativeVsTranslatedConfig()
    sampling = {"weak": cfg.sampling.key(), "translator": cfg.translator.sampling.key(), "template": cfg.translator.template}
    assert g["completion_id"] == completion_id(de["prompt_id"], "weak+translate", sampling, 0)
    assert g["english_prompt"] == "[English] Wie ist das Wetter heute?"
    assert set(pairs["method"]) == {"native_vs_translated"} and check_pairs(pairs) == []
    # 3 prompts in: ru had no in-language best completion so it never reached us; 2 pairs out
    assert pairs.height == 2 and q.is_empty()


def test_failures_and_skipped_languages_are_quarantined(scored, prompts):
    chosen = best(scored, prompts)
    pairs, gens, q = native_vs_translated(chosen, prompts, TaggingBackend("weak", fail_on="天気"), Translator("mt"),
                                          NativeVsTranslatedConfig(skip_languages=["de"]))
    assert pairs.height == 0 and gens.height == 0
    reasons = sorted(q["reason"])
    assert reasons[0] == "native_vs_translated: language de is skipped (nothing to translate)"
    assert "the weak teacher's English answer failed (error)" in reasons[1]
    assert pairs.height + q.height == chosen.height  # rows in = pairs + quarantined


def test_scorer_fills_rejected_reward(scored, prompts):
    class LengthScorer:
        name = "len"

        def score(self, prompts, completions):
            return [-float(len(c)) for c in completions]

    pairs, _, _ = native_vs_translated(best(scored, prompts), prompts, TaggingBackend("weak"), Translator("mt"), scorer=LengthScorer())
    r = pairs.row(0, named=True)
    assert r["rejected_reward"] == -len(r["rejected"][0]["content"])
    assert r["margin"] == r["chosen_reward"] - r["rejected_reward"]
