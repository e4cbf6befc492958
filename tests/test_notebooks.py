"""Notebooks smoke-run through papermill with tiny parameters on the embedded model."""

import json
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_03_offline_afsft_runs_and_writes_metrics(tmp_path):
    metrics = tmp_path / "metrics.json"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "03_offline_afsft.ipynb"),
        str(tmp_path / "03.ipynb"),
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
        parameters={
            "random_episodes": 4,
            "agent_episodes": 1,
            "min_format_episodes": 1,
            "eval_episodes": 2,
            "num_envs": 2,
            "train_steps": 2,
            "batch_size": 2,
            "warmup": 1,
            "filter_start_step": 1,
            "run_root": str(tmp_path / "run"),
            "metrics_path": str(metrics),
        },
    )
    m = json.loads(metrics.read_text())
    assert m["task"] == "NumberLine" and "SmolLM2" in m["model"] and m["hardware"] and m["episodes"] == 2
    for run in ("base", "sft", "afsft"):
        assert 0 <= m[run]["success"] <= 1 and 0 <= m[run]["valid"] <= 1 and m[run]["return"] <= 1
    assert m["dataset"]["buffer/episodes"] == 6
    assert m["afsft_td_steps"] == 32 and m["afsft_critic_whiten"] is True  # the notebook's critic defaults
    assert (tmp_path / "run" / "afsft" / "checkpoint" / "critic.safetensors").is_file()
