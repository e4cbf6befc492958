"""What a new user sees (issue 30): refusals in one sentence before any model loads and with nothing left behind,
Ctrl-C ending in one line with the command that continues, progress that moves where the waits are, a dataset
folder that opens as Parquet with its config beside it, and checkpoints whose adapter loads elsewhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.test_cli import AFSFT, ROOT, tiny_overrides
from tests.test_online import online_overrides
from vlmq_core import cli, run
from vlmq_core.buffer import BufferError, TurnBuffer
from vlmq_core.rundir import load_history


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def no_model_loads(*args, **kwargs):
    """Stands in for the model loader: a refusal must come before any model loads."""
    raise AssertionError("a model was loaded before the refusal")


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_refusals_come_in_one_sentence_before_any_model_and_leave_nothing(tmp_path, tiny_folders, capsys, monkeypatch):
    common = tiny_overrides(tiny_folders["llama"], tmp_path)
    assert cli.main(["collect", "--config", AFSFT, *common, "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(run, "load_policy", no_model_loads)
    before = files_under(tmp_path)

    def refused(command: str, *args: str) -> str:
        assert cli.main([command, *args, "--quiet"]) == 2
        message = one_line_error(capsys)
        assert files_under(tmp_path) == before, "a refused command left files behind"
        return message

    train = ["train", "--config", AFSFT, *common, f"run_dir={tmp_path / 'run'}"]
    assert "run_dir /proc/x cannot be written" in refused(*train, "run_dir=/proc/x")
    (tmp_path / "a-file").write_text("x")
    before = files_under(tmp_path)
    assert f"run_dir {tmp_path / 'a-file'} is a file" in refused(*train, f"run_dir={tmp_path / 'a-file'}")
    assert f"data.path {tmp_path / 'a-file'} is a file" in refused(*train, f"data.path={tmp_path / 'a-file'}")
    assert refused(*train, "train.steps=-5").endswith("train.steps must be >= 0, not -5.")
    assert "Model folder './no/such/folder' does not exist" in refused(*train, "model.name=./no/such/folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    assert "'someone/no-such-model' is not in the Hugging Face cache" in refused(
        *train, "model.name=someone/no-such-model", f"run_dir={tmp_path / 'new'}"
    )
    assert time.perf_counter() - started < 5  # no hub retries
    fresh = subprocess.run(  # and in a fresh process, where nothing has imported huggingface_hub's submodules yet
        [sys.executable, "-m", "vlmq_core.cli", *train, "model.name=someone/no-such-model", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert fresh.returncode == 2 and "is not in the Hugging Face cache" in fresh.stderr, fresh.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\n lr: [1\n")
    before = files_under(tmp_path)
    assert f"Config file {bad} is not valid YAML at line 3" in refused("train", "--config", str(bad))

    online = online_overrides(tiny_folders["llama"], tmp_path)
    message = refused("online", *online, f"online.init_from={tmp_path / 'never-trained'}")
    assert f"online.init_from: {tmp_path / 'never-trained'} does not exist" in message
    assert not (tmp_path / "run").exists()  # no buffer folder, no run directory


def test_ctrl_c_ends_in_one_line_with_the_command_that_continues(tmp_path, tiny_folders):
    """SIGINT (Ctrl-C) in `vlmq train` and `vlmq online` once a checkpoint exists: status 130, no traceback, one
    line naming where the run stopped and the command that continues it, and that command continues it."""
    common = tiny_overrides(tiny_folders["llama"], tmp_path)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vlmq_core.cli"]
    subprocess.run([*cmd, "collect", "--config", AFSFT, *common, "--quiet"], cwd=ROOT, env=env, check=True)

    def interrupt(args: list[str], ready) -> str:
        # SIGINT at its default in the child, as under a terminal: a suite launched as a background job of a
        # non-interactive shell (CI under `setsid ... &`) starts with SIGINT ignored, its children inherit that, and
        # Python then installs no KeyboardInterrupt handler, so the interrupt below would be lost
        proc = subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        deadline = time.time() + 300
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            err = proc.communicate(timeout=120)[1]
        except subprocess.TimeoutExpired:  # stop it here: left running, it would train on beside the rest of the suite
            proc.kill()
            pytest.fail(f"`vlmq {args[0]}` still ran 120 s after SIGINT; its stderr:\n{proc.communicate()[1]}")
        assert proc.returncode == 130, err
        assert "Traceback" not in err, err
        return err.strip().splitlines()[-1]

    run_dir = tmp_path / "train"
    # (more updates than a fast CPU runs before the interrupt: 400 tiny ones once ended before two rows were read)
    args = ["train", "--config", AFSFT, *common, f"run_dir={run_dir}", "train.steps=100000",
            "train.checkpoint_every=1", "--quiet"]  # fmt: skip
    line = interrupt(args, lambda: len(load_history(run_dir)) >= 2)
    assert line.startswith(f"vlmq train: stopped; {run_dir} holds its checkpoint at update ") and "`vlmq train" in line
    assert f"run_dir={run_dir}" in line and "train.steps=100000" in line

    online = [*online_overrides(tiny_folders["llama"], tmp_path, epochs=50), f"run_dir={tmp_path / 'online'}"]
    line = interrupt(
        ["online", *online, "--quiet"], lambda: (tmp_path / "online" / "checkpoint" / "online.pt").is_file()
    )
    assert " holds its checkpoint after epoch " in line and f"`vlmq online --resume {tmp_path / 'online'}`" in line
    again = subprocess.run([*cmd, "online", "--resume", str(tmp_path / "online"), "online.epochs=3", "--quiet"],
                           cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0 and "Resumed" in again.stdout, again.stderr


def test_progress_moves_inside_an_epoch_and_the_evaluation_is_labelled_eval(tmp_path, tiny_folders, capsys):
    common = online_overrides(tiny_folders["llama"], tmp_path, epochs=2)
    assert cli.main(["collect", *common, "--quiet"]) == 0
    assert cli.main(["online", *common]) == 0
    err = capsys.readouterr().err
    assert "online NumberLine, epoch 1: update 1/2" in err and "online NumberLine, epoch 2: collecting step 3/3" in err
    assert "online NumberLine, epoch 2: evaluating" in err
    assert cli.main(["train", *common, f"run_dir={tmp_path / 'train'}", "train.steps=1"]) == 0
    err = capsys.readouterr().err
    assert "eval NumberLine/agent: " in err and "collect NumberLine/agent" not in err
    assert "episodes, " in err and "step 1, 2 playing" in err  # the step it is on, not a time estimate


def test_a_dataset_folder_opens_as_parquet_and_an_idle_collect_leaves_its_config(tmp_path, tiny_folders, capsys):
    datasets = pytest.importorskip("datasets")
    common = tiny_overrides(tiny_folders["llama"], tmp_path)
    assert cli.main(["collect", "--config", AFSFT, *common, "--quiet"]) == 0
    data = tmp_path / "data"
    saved = data / ".config.yaml"
    assert saved.is_file() and not (data / "config.yaml").exists()
    turns = len(TurnBuffer(data))
    assert len(pd.read_parquet(data)) == turns
    assert len(datasets.load_dataset("parquet", data_dir=str(data), split="train")) == turns
    text, mtime = saved.read_text(), saved.stat().st_mtime_ns
    assert cli.main(["collect", "--config", AFSFT, *common, "collect.temperature=0.9", "--quiet"]) == 0
    assert saved.read_text() == text and saved.stat().st_mtime_ns == mtime  # nothing collected: nothing rewritten
    os.replace(saved, data / "config.yaml")  # a dataset written before the config was hidden
    assert cli.main(["collect", "--config", AFSFT, *common, "--quiet"]) == 0
    assert saved.read_text() == text and not (data / "config.yaml").exists()
    capsys.readouterr()


def test_a_checkpoint_adapter_names_its_base_as_given_and_loads_with_peft(tmp_path, tiny_folders):
    from peft import AutoPeftModelForCausalLM

    from vlmq_core.model import EMBEDDED_HUB_ID, Policy, PolicyConfig
    from vlmq_core.tiny import tiny_llama

    common = tiny_overrides(tiny_folders["llama"], tmp_path)
    assert cli.main(["collect", "--config", AFSFT, *common, "--quiet"]) == 0
    run_dir = tmp_path / "r"
    assert cli.main(["train", "--config", AFSFT, *common, f"run_dir={run_dir}", "train.steps=1", "eval.episodes=0",
                     "--quiet"]) == 0  # fmt: skip
    adapter = run_dir / "checkpoint" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_folders["llama"]
    assert AutoPeftModelForCausalLM.from_pretrained(str(adapter)).peft_config["default"].r > 0
    assert "`checkpoint/adapter/`" in (ROOT / "README.md").read_text()

    model, tok = tiny_llama(seed=0)
    Policy(model, tok, False, PolicyConfig()).save(tmp_path / "embedded")  # model.name: embedded
    meta = json.loads((tmp_path / "embedded" / "adapter" / "adapter_config.json").read_text())
    assert meta["base_model_name_or_path"] == EMBEDDED_HUB_ID


def test_an_unreadable_shard_that_is_the_whole_dataset_is_not_to_be_deleted(tmp_path):
    from vlmq_core.turns import Turn

    with TurnBuffer(tmp_path) as buf:
        buf.add(
            [Turn(episode_id="e", t=0, task="NumberLine", prompt="p", image=None, reply="r", reward=0.0, done=True)]
        )
    shard = next(tmp_path.glob("shard-*.parquet"))
    shard.write_bytes(b"cut off")
    with pytest.raises(BufferError) as err:
        TurnBuffer(tmp_path)
    message = str(err.value)
    assert "this shard is the whole dataset" in message and "delete" not in message
    assert "collects exactly the seeds missing" in message
