"""The shipped `smol` profile: it validates, and SmolLM2 (a pkg: reference that resolves here) is
the training base, the Arbiter's base, a transformers teacher, and behind the run's own
`transformers serve` a second teacher and the LLM-judge scorer, beside embedded teachers."""

from __future__ import annotations

from assets.config import load_config
from factory.model_sources import check_model_ref, parse_model_ref


def test_smol_profile_puts_smollm2_in_the_model_roles():
    cfg = load_config("smol")
    teachers = cfg.resolved_teachers()
    refs = {
        "training.base_model": cfg.training.base_model,
        "arbiter.base_model": cfg.arbiter.base_model,
        "teachers.smollm2": next(t.model for t in teachers if t.name == "smollm2"),
        "serve.smollm2": next(s.model for s in cfg.serve if s.name == "smollm2"),
    }
    for key, ref in refs.items():
        assert parse_model_ref(ref).kind == "pkg", key
        assert check_model_ref(ref) is None, key  # installed, a GGUF, with a chat template
    assert len(set(refs.values())) == 1
    assert {t.backend for t in teachers} == {"transformers", "openai"} and sum(t.embedded for t in teachers) == 2
    served = [t for t in teachers if t.backend == "openai"] + [cfg.scoring.llm_judge_model]
    assert {t.api_base for t in served} == {"serve:smollm2"}
    assert "{completion}" in cfg.scoring.llm_judge.rubric and cfg.scoring.primary == "arbiter"
    # a demo: a handful of optimizer steps per stage
    for stage in (cfg.training.sft, cfg.training.dpo, cfg.training.online.dpo):
        assert 0 < stage.max_steps <= 2 and stage.batch_size <= 2
