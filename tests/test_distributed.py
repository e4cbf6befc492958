"""Two processes on CPU (gloo) through `accelerate launch`: identical weights and head statistics in both, metrics
that count both processes' steps, an evaluation split between them, and a 2-process run killed with SIGKILL and
resumed that ends as the uninterrupted one does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_online import online_overrides

from vlmq_core import cli
from vlmq_core.buffer import TurnBuffer
from vlmq_core.model import load_checkpoint
from vlmq_core.rundir import load_history

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _launch(*args: str) -> subprocess.Popen:
    """`accelerate launch` of 2 CPU processes (torchrun underneath; gloo, since there is no GPU) in a new session,
    so the whole job can be killed at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(port), *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in load_history(run, key="epoch")]


def test_two_processes_hold_identical_weights_count_both_and_resume_after_kill_9(tmp_path, tiny_folders):
    common = online_overrides(tiny_folders["llama"], tmp_path, epochs=5) + ["eval.episodes=3"]
    assert cli.main(["collect", *common, "--quiet"]) == 0
    straight, killed, ranks = tmp_path / "straight", tmp_path / "killed", tmp_path / "ranks"
    job = _launch("tests/online_ranks.py", str(ranks), *common, f"run_dir={straight}")
    assert job.wait(timeout=600) == 0, job.stderr.read()

    a, b = (torch.load(ranks / f"rank-{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys() and any("popart" in k for k in a) and any("lora" in k for k in a)
    for k in a:  # LoRA, critic, target critic, PopArt and whitening: the same in both processes
        assert torch.equal(a[k], b[k]), k
    assert a["popart.mu"].item() != 0.0 and a["whiten.refreshes"].item() > 1  # they moved: agreeing means something
    rows = load_history(straight, key="epoch")
    assert [r["online/env_steps"] for r in rows] == [0, 18, 36, 54, 72]  # 3 steps x 3 envs x 2 processes
    assert rows[-1]["eval/episodes"] == 3  # split 2 + 1 between the processes, pooled
    buffers = [TurnBuffer(straight / f"buffer-{r}") for r in (0, 1)]
    seeds = [{t.seed for t in buf.turns if t.episode_id.startswith("online-")} for buf in buffers]
    assert seeds[0] and seeds[1] and not seeds[0] & seeds[1]  # each process its own environments and seeds
    assert all(s % 2 == 0 for s in seeds[0]) and all(s % 2 == 1 for s in seeds[1])
    assert sum(len(b) for b in buffers) == rows[-1]["buffer/turns"]

    job = _launch("-m", "vlmq_core.cli", "online", *common, f"run_dir={killed}", "--quiet")
    while job.poll() is None and len(load_history(killed, key="epoch")) < 2:
        time.sleep(0.01)
    time.sleep(0.3)
    assert job.poll() is None, "the run ended before it could be killed"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    job = _launch("-m", "vlmq_core.cli", "online", "--resume", str(killed), "--quiet")
    assert job.wait(timeout=600) == 0, job.stderr.read()
    assert _rows(killed) == _rows(straight)
    x, y = (load_checkpoint(d, device="cpu").state_dict() for d in (straight, killed))
    for k in x:
        assert torch.equal(x[k], y[k]), k
    for r in (0, 1):
        assert TurnBuffer(straight / f"buffer-{r}").turns == TurnBuffer(killed / f"buffer-{r}").turns
