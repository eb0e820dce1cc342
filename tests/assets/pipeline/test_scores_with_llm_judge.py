"""The `scores` asset with an extra LLM-judge scorer behind a real OpenAI-compatible HTTP server
on loopback: every completion gets one Arbiter row and one judge row; an answer the judge
never makes parseable is quarantined, not scored 0; routing keeps using the Arbiter."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import polars as pl
import pytest

from assets.common import checkpoint_frame
from assets.io_manager import WarehouseIOManager
from assets.resources import FactoryResource, ModelServers
from training.tiny import train_tokenizer
from warehouse.store import Warehouse


@pytest.fixture
def judge_server():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            answer = "I cannot rate this." if "GIBBERISH" in prompt else "Score: 7"
            data = json.dumps({
                "id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": i, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                            for i in range(body.get("n", 1))],
                "usage": {"completion_tokens": 3},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _reward_model(path):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = train_tokenizer(["hola mundo", "¿qué tal?", "muy bien"] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_scores_with_llm_judge(home, tmp_path, judge_server, monkeypatch):
    from assets.definitions import ALL_ASSETS

    monkeypatch.setenv("JUDGE_KEY", "secret")
    wh = Warehouse(home)
    wh.write_table("prompts", pl.DataFrame({
        "prompt_id": ["p_1", "p_2"], "language": ["es", "es"], "text": ["¿Qué tal?", "Hola"], "split": ["train"] * 2,
        "source": ["t"] * 2, "origin": ["native"] * 2, "references": [["Bien"], ["Hola"]], "run_id": ["r"] * 2,
    }), {"language": "es"})
    wh.write_table("generations", pl.DataFrame({
        "completion_id": ["c_1", "c_2", "c_3"], "prompt_id": ["p_1", "p_1", "p_2"], "language": ["es"] * 3,
        "teacher": ["a", "b", "a"], "backend": ["x"] * 3, "sample_index": [0, 0, 0], "sampling": ["{}"] * 3,
        "text": ["Muy bien, gracias.", "GIBBERISH", "¡Hola! ¿Cómo estás?"], "n_tokens": [4, 1, 4],
        "finish_reason": ["stop"] * 3, "seconds": [0.1] * 3, "run_id": ["r"] * 3,
    }), {"language": "es"})
    arbiter = checkpoint_frame([{"stage": "reward_model", "name": "arbiter", "path": _reward_model(tmp_path / "rm")}], "r")
    wh.write_table("checkpoints", arbiter, {"producer": "arbiter"})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "languages: [en, es, de, ja, ru]\n"
        "scoring:\n"
        "  llm_judge: {name: judge}\n"
        f"  llm_judge_model: {{name: judge, backend: openai, model: m, api_base: '{judge_server}', api_key_env: JUDGE_KEY, max_retries: 1}}\n"
    )
    result = dg.materialize(
        ALL_ASSETS, selection=["scores"], partition_key="es",
        resources={"env": FactoryResource(home=str(home), config_path=str(cfg)), "servers": ModelServers(), "warehouse": WarehouseIOManager(home=str(home))},
    )
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    scores = wh.read_table("scores")
    assert sorted(scores.filter(pl.col("scorer") == "arbiter")["completion_id"]) == ["c_1", "c_2", "c_3"]
    judge = scores.filter(pl.col("scorer") == "judge")
    assert sorted(judge["completion_id"]) == ["c_1", "c_3"] and set(judge["reward"]) == {7.0}
    q = wh.sql("select row_key, reason from quarantine where asset = 'scores'")
    assert q["row_key"].to_list() == ["c_2|judge"]
