"""Notebooks smoke-run through papermill on a tiny local model folder, checked against what they saved."""

import json
import math
from pathlib import Path

import pytest

from vlmq_core import config
from vlmq_core.buffer import TurnBuffer
from vlmq_core.inspector import filter_summary
from vlmq_core.model import load_checkpoint
from vlmq_core.run import RunConfig

papermill = pytest.importorskip("papermill")
ROOT = Path(__file__).resolve().parents[1]


def same(a: dict, b: dict) -> bool:
    """Equal dicts of numbers, NaN equal to NaN (a filter group with no tokens)."""
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


@pytest.mark.slow
def test_03_offline_afsft_runs_and_its_numbers_come_from_its_runs(tmp_path, tiny_folders):
    """Notebook 03 end to end on a tiny random model, then checked against its own outputs: the metrics file's
    evaluations are the runs' eval.json, its dataset statistics the dataset's, and its filter summary is what
    the saved AFSFT checkpoint gives on the saved dataset (a wrong checkpoint, a lost critic, PopArt or whitening
    state, or another loss config than the run's would all show here)."""
    metrics_path = tmp_path / "metrics.json"
    overrides = [
        f"model.name={tiny_folders['llama']}",
        "data.sources.0.episodes=4",
        "data.sources.1.episodes=1",
        "data.sources.2.episodes=1",
        "collect.num_envs=2",
        "collect.max_reply_tokens=4",
        "eval.episodes=2",
        "train.steps=3",
        "critic.hidden=32",
        "train.batch_size=2",
        "train.whiten_calib_turns=4",
        "loss.filter_start_step=1",
    ]
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "03_offline_afsft.ipynb"),
        str(tmp_path / "03.ipynb"),
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
        parameters={"overrides": overrides, "out_dir": str(tmp_path / "run"), "metrics_path": str(metrics_path)},
    )
    m = json.loads(metrics_path.read_text())
    run = tmp_path / "run"
    assert m["task"] == "NumberLine" and m["model"] == tiny_folders["llama"] and m["hardware"] and m["episodes"] == 2
    for name in ("sft", "afsft"):
        saved = json.loads((run / name / "eval.json").read_text())
        assert m[name] == {k: saved[f"eval/{k}"] for k in m[name]}, name
        assert saved["step"] == 3
        cfg = config.load(RunConfig, run / name / "config.yaml")
        assert config.to_dict(cfg) == m["configs"][name]
        assert cfg.model.name == tiny_folders["llama"] and cfg.run_dir == str(run / name)
    assert m["base"]["episodes"] == 2
    data = TurnBuffer(run / "data")
    assert m["dataset"] == json.loads(json.dumps(data.stats())) and m["dataset"]["buffer/episodes"] == 6
    afsft = load_checkpoint(run / "afsft", device="cpu")
    assert afsft.cfg.critic.init_q == m["afsft_init_q"] == data.min_return_to_go()
    cfg = config.load(RunConfig, run / "afsft" / "config.yaml")
    assert same(filter_summary(afsft, data.transitions(), loss=cfg.loss), m["afsft_filter"])
