"""The `vlmq` command line on a tiny local model: collect, train, resume, eval, and its errors (status 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmq_core import cli, config
from vlmq_core.model import load_checkpoint
from vlmq_core.run import RunConfig
from vlmq_core.rundir import load_history

ROOT = Path(__file__).resolve().parents[1]
AFSFT = str(ROOT / "configs" / "numberline_afsft.yaml")


def tiny_overrides(folder: str, root: Path) -> list[str]:
    """Notebook 03's AFSFT config, shrunk to seconds on a tiny random model."""
    return [
        f"model.name={folder}",
        f"data.path={root / 'data'}",
        "data.sources.0.episodes=6",
        "data.sources.1.episodes=2",
        "data.sources.2.episodes=1",
        "collect.num_envs=3",
        "collect.max_reply_tokens=4",
        "critic.hidden=32",
        "train.batch_size=2",
        "train.checkpoint_every=2",
        "train.whiten_calib_turns=4",
        "loss.filter_start_step=1",
        "eval.episodes=2",
    ]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmq_core.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_an_unknown_key_exits_2_naming_it():
    result = run_cli("train", "--config", AFSFT, "no.such.key=1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no.such.key" in result.stderr, result.stderr
    assert result.stdout == ""


def test_help_lists_every_key_with_its_help(capsys):
    def help_of(command: str) -> str:
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        assert done.value.code == 0
        return capsys.readouterr().out

    text = help_of("train")
    for key, _, _, doc in config.options(RunConfig):
        assert f"  {key} (" in text, key
        assert doc.split()[0] in text
    assert "data.sources.N.strategy" in help_of("collect") and "data.sources.N.strategy" in help_of("eval")


def test_bad_arguments_and_missing_things_exit_2_in_one_line(tmp_path, capsys):
    assert cli.main(["train", "--config", AFSFT, f"data.path={tmp_path / 'none'}"]) == 2
    assert "is empty or missing: build it with `vlmq collect" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["eval", "base", "model.name=/no/such/model", "--episodes", "1"]) == 2
    assert "Model folder '/no/such/model' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        cli.main(["train", "--bogus"])
    assert err.value.code == 2


def test_collect_train_resume_and_eval(tmp_path, tiny_folders, capsys):
    """The whole CLI on a tiny model: a run stopped after 2 updates and continued to 4 equals a straight 4-update
    run (same metrics and parameters); a different config in the same run_dir is refused; eval writes JSON."""
    common = tiny_overrides(tiny_folders["llama"], tmp_path)
    assert cli.main(["collect", "--config", AFSFT, *common, "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["buffer/episodes"] == 9 and stats["buffer/by_source"]["random"] > 0
    assert cli.main(["collect", "--config", AFSFT, *common, "--quiet"]) == 0  # nothing missing: nothing added
    assert json.loads(capsys.readouterr().out)["buffer/episodes"] == 9

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main(["train", "--config", AFSFT, *common, f"run_dir={straight}", "train.steps=4", "--quiet"]) == 0
    assert cli.main(["train", "--config", AFSFT, *common, f"run_dir={split}", "train.steps=2", "--quiet"]) == 0
    assert cli.main(["train", "--config", AFSFT, *common, f"run_dir={split}", "train.steps=4", "--quiet"]) == 0
    capsys.readouterr()
    losses = {d: [round(m["train/loss"], 5) for m in load_history(d)] for d in (straight, split)}
    assert len(losses[straight]) == 4 and losses[split] == losses[straight]
    a, b = (load_checkpoint(d, device="cpu").state_dict() for d in (straight, split))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    saved = config.load(RunConfig, split / "config.yaml")
    assert saved.train.steps == 4 and saved.loss.advantage == "td" and saved.model.name == tiny_folders["llama"]
    run_eval = json.loads((split / "eval.json").read_text())
    assert run_eval["step"] == 4 and run_eval["eval/episodes"] == 2

    assert cli.main(["train", "--config", AFSFT, *common, f"run_dir={split}", "loss.beta=0.5"]) == 2
    assert "another config (loss.beta: 0.0 there, 0.5 now)" in capsys.readouterr().err

    out = tmp_path / "e.json"
    assert cli.main(["eval", str(split), "--episodes", "2", "--seed", "5", "--out", str(out), "--quiet"]) == 0
    assert "success" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["eval/episodes"] == 2 and record["task"] == "NumberLine" and record["hardware"]
    assert cli.main(["eval", str(split / "checkpoint"), "--episodes", "2", "--seed", "5", "--quiet"]) == 0
    again = json.loads((split / "eval-NumberLine-s5-n2.json").read_text())
    assert {k: v for k, v in again.items() if k.startswith("eval/")} == {
        k: v for k, v in record.items() if k.startswith("eval/")
    }  # the same checkpoint, seeds and settings: the same evaluation
