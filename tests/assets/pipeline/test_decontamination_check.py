"""The blocking decontamination check on sft_data: passes after filtering, fails when an eval
prompt is planted in the training data and filtering is off (so downstream training stops)."""

import dagster as dg
import polars as pl
import pytest

from assets.io_manager import WarehouseIOManager
from assets.resources import FactoryResource, ModelServers
from warehouse.store import Warehouse

EVAL_TEXT = "¿Cuál es tu comida favorita en invierno?"


def _plant(home) -> None:
    wh = Warehouse(home)
    prompts = pl.DataFrame({
        "prompt_id": ["p_eval", "p_clean", "p_planted"],
        "language": ["es"] * 3,
        "text": [EVAL_TEXT, "Háblame de los volcanes de Chile.", "cual es tu comida favorita en invierno"],
        "split": ["eval", "train", "train"],
        "source": ["t"] * 3, "origin": ["native"] * 3, "references": [["Sopa"], ["Hay muchos"], ["Sopa"]],
        "run_id": ["r"] * 3,
    })
    wh.write_table("prompts", prompts, {"language": "es"})
    gens = pl.DataFrame({
        "completion_id": ["c_1", "c_2"], "prompt_id": ["p_clean", "p_planted"], "language": ["es", "es"],
        "teacher": ["t1", "t1"], "backend": ["x", "x"], "sample_index": [0, 0], "sampling": ["{}", "{}"],
        "text": ["Chile tiene muchos volcanes.", "Me gusta la sopa."], "n_tokens": [5, 4],
        "finish_reason": ["stop", "stop"], "seconds": [0.1, 0.1], "run_id": ["r", "r"],
    })
    wh.write_table("generations", gens, {"language": "es"})
    sel = pl.DataFrame({
        "prompt_id": ["p_clean", "p_planted"] * 2, "language": ["es"] * 4,
        "strategy": ["reward_routing"] * 2 + ["single_teacher"] * 2, "completion_id": ["c_1", "c_2"] * 2,
        "teacher": ["t1"] * 4, "reward": [1.0, 0.5] * 2, "margin": [0.0] * 4, "run_id": ["r"] * 4,
    })
    wh.write_table("selections", sel, {"language": "es"})


def _run(home, tmp_path, decontaminate: bool):
    from assets.definitions import ALL_ASSETS

    cfg = tmp_path / f"cfg_{decontaminate}.yaml"
    cfg.write_text(f"languages: [en, es, de, ja, ru]\narbitrage: {{decontaminate: {str(decontaminate).lower()}}}\n")
    return dg.materialize(
        ALL_ASSETS, selection=["sft_data"], raise_on_error=False,
        resources={"env": FactoryResource(home=str(home), config_path=str(cfg)), "servers": ModelServers(), "warehouse": WarehouseIOManager(home=str(home))},
    )


@pytest.mark.parametrize("decontaminate", [True, False])
def test_planted_eval_prompt(home, tmp_path, decontaminate):
    _plant(home)
    result = _run(home, tmp_path, decontaminate)
    (check,) = result.get_asset_check_evaluations()
    sft = Warehouse(home).read_table("sft_data")
    if decontaminate:
        assert check.passed
        assert set(sft["prompt_id"]) == {"p_clean"}
        q = Warehouse(home).sql("select reason from quarantine where asset = 'sft_data'")
        assert any("contaminated" in r for r in q["reason"])
    else:
        assert not check.passed  # the planted near-duplicate of the eval prompt is caught
        assert check.metadata["contaminated_rows"].value == 2  # both strategies' rows
