"""The offline-to-online loop on a tiny local model: exploration per turn, the epoch metrics, presets, evaluation
that never writes to the buffer, and kill -9 at random moments followed by an exact resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmq_core import cli, config
from vlmq_core.buffer import TurnBuffer
from vlmq_core.config import ConfigError
from vlmq_core.model import load_checkpoint
from vlmq_core.online import ExploreConfig, OnlineConfig
from vlmq_core.run import load_config
from vlmq_core.rundir import load_history

ROOT = Path(__file__).resolve().parents[1]


def online_overrides(folder: str, root: Path, epochs: int = 4) -> list[str]:
    """A tiny offline-to-online run: 1 offline epoch on a 8-episode dataset, then online epochs of 3 steps in
    3 environments with every exploration strategy, 2 updates per epoch, an evaluation every 2 epochs."""
    return [
        f"model.name={folder}",
        f"run_dir={root / 'run'}",
        f"data.path={root / 'data'}",
        "data.sources.0.episodes=6",
        "data.sources.1.episodes=1",
        "data.sources.2.episodes=1",
        "collect.num_envs=3",
        "collect.max_reply_tokens=4",
        "critic.hidden=32",
        "critic.whiten=true",
        "critic.init_q=min_return_to_go",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.whiten_calib_turns=4",
        "train.whiten_every=2",
        "loss.actor=afsft",
        "loss.filter_start_step=1",
        "eval.episodes=2",
        f"online.epochs={epochs}",
        "online.offline_epochs=1",
        "online.steps_per_env=3",
        "online.updates_per_epoch=2",
        "online.eval_every=2",
        "online.explore.epsilon_start=0.6",
        "online.explore.epsilon_end=0.2",
        "online.explore.decay_epochs=2",
        "online.explore.min_format=1",
        "online.explore.oracle=1",
    ]


def test_epsilon_decays_linearly_and_the_draw_follows_it_and_the_weights():
    ex = ExploreConfig(epsilon_start=0.8, epsilon_end=0.2, decay_epochs=3, random=1, min_format=0, oracle=3)
    assert [round(ex.epsilon(e), 6) for e in range(5)] == [0.8, 0.6, 0.4, 0.2, 0.2]
    rng = np.random.default_rng(0)
    draws = [ex.draw(rng, 0.5) for _ in range(4000)]
    assert abs(draws.count("agent") / 4000 - 0.5) < 0.03
    assert abs(draws.count("oracle") / max(1, draws.count("random")) - 3) < 0.5 and "min_format" not in draws
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    ex.draw(a, 0.0), ex.draw(b, 1.0)
    assert a.random() == b.random()  # a draw moves the episode's generator the same way whatever it picks
    with pytest.raises(ConfigError, match="positive weight"):
        ExploreConfig(random=0)
    with pytest.raises(ConfigError, match="use_dataset"):
        OnlineConfig(offline_epochs=2, use_dataset=False)


def test_presets_fill_a_config_file_and_the_file_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: babyai-paper\nonline:\n  epochs: 7\ncollect:\n  task: BabyAI-GoToLocal\n")
    cfg = load_config(f, ["online.explore.epsilon_end=0.3"])
    assert cfg.online.epochs == 7 and cfg.online.steps_per_env == 150 and cfg.online.min_buffer_turns == 5000
    assert cfg.online.explore.epsilon_start == 1.0 and cfg.online.explore.epsilon_end == 0.3
    assert cfg.train.lr_critic == 8e-4 and cfg.loss.critic_weight == 8.0
    f.write_text("preset: gym-cards-paper\n")
    gym = load_config(f).online  # the preset holds only what differs from the defaults (issue 30)
    assert (gym.offline_epochs, gym.steps_per_env, gym.updates_per_epoch) == (50, 96, 512)
    f.write_text("preset: gym-cards-fast\n")
    with pytest.raises(ConfigError, match="Unknown preset 'gym-cards-fast'"):
        load_config(f)


def _metric_keys_documented() -> set[str]:
    text = (ROOT / "docs" / "METRICS.md").read_text()
    keys = set()
    for cell in re.findall(r"^\| (.+?) \|", text, flags=re.M):
        keys |= set(re.findall(r"`([a-z_]+(?:/[a-z_]+)?)`", cell))
    return keys


def test_an_online_run_explores_per_turn_evaluates_apart_and_documents_every_metric(tmp_path, tiny_folders, capsys):
    common = online_overrides(tiny_folders["llama"], tmp_path)
    assert cli.main(["collect", *common, "--quiet"]) == 0
    assert cli.main(["online", *common, "train.report_to=[tensorboard]", "--quiet"]) == 0
    run = tmp_path / "run"
    rows = load_history(run, key="epoch")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for line in (run / "metrics.jsonl").read_text().splitlines():  # strict JSON: no NaN, which jq or JS reject
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}"))
    assert [r["online/updates"] for r in rows] == [2, 4, 6, 8]
    assert "online/epsilon" not in rows[0] and rows[0]["online/env_steps"] == 0  # the offline epoch
    assert [r["online/env_steps"] for r in rows[1:]] == [9, 18, 27]  # 3 steps x 3 environments per epoch
    assert [round(r["online/epsilon"], 6) for r in rows[1:]] == [0.6, 0.4, 0.2]
    assert ["eval/success" in r for r in rows] == [True, True, False, True]  # last offline, every 2nd, last
    documented = _metric_keys_documented()
    for row in rows:
        missing = [k for k in row if k not in documented and not k.startswith("online/turns_")]
        assert not missing, f"docs/METRICS.md lacks {missing}"
    assert "online/turns_<strategy>" in (ROOT / "docs" / "METRICS.md").read_text()

    buffer = TurnBuffer(run / "buffer")
    online = {eid: ts for eid, ts in buffer.episodes().items() if eid.startswith("online-")}
    seeds = sorted(ts[0].seed for ts in online.values())
    assert seeds == list(range(1_000_000, 1_000_000 + len(seeds)))  # no eval seed (10000+) ever stored
    strategies = {t.strategy for ts in online.values() for t in ts}
    assert {"agent", "random", "oracle", "min_format"} >= strategies and len(strategies) >= 3
    mix = buffer.stats()["buffer/by_strategy"]
    assert rows[-1]["buffer/by_strategy"] == mix and mix["random"] > 0
    assert sum(r.get("online/turns_agent", 0) for r in rows) == sum(
        t.strategy == "agent" for ts in online.values() for t in ts
    ) + sum(t.strategy == "agent" for s in _in_flight(run) for t in s)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("online/env_steps")]
    values = [e.value for e in events.Scalars("online/env_steps")]
    assert steps == [1, 2, 3, 4] and values == [0, 9, 18, 27]
    assert [round(e.value, 5) for e in events.Scalars("train/loss")] == [round(r["train/loss"], 5) for r in rows]
    assert json.loads((run / "eval.json").read_text())["epoch"] == 4

    # An episode in flight whose replay no longer matches (a changed environment) stops the resume in one sentence.
    state_file = run / "checkpoint" / "online.pt"
    state = torch.load(state_file, weights_only=False)
    slot = next(s for s in state["ranks"][0]["online"]["slots"] if s is not None and s["turns"])
    slot["turns"][0]["prompt"] = "another prompt"
    torch.save(state, state_file)
    assert cli.main(["online", "--resume", str(run), "--quiet"]) == 1
    assert "is not deterministic given its seed, so this run cannot resume" in capsys.readouterr().err


def _in_flight(run: Path) -> list[list]:
    from vlmq_core.turns import Turn

    state = torch.load(run / "checkpoint" / "online.pt", weights_only=False)["ranks"][0]["online"]
    return [[Turn(**t) for t in s["turns"]] for s in state["slots"] if s is not None]


def _cli_process(args: list[str]) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "vlmq_core.cli", "online", *args, "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _newest_shard(folder: Path) -> int:
    return max((int(p.name.split("-")[2].split(".")[0]) for p in folder.glob("shard-*.parquet")), default=-1)


def _rows_without_time(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in load_history(run, key="epoch")]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_folders):
    """SIGKILL an online run several times at random moments (mid-collection, mid-update, mid-checkpoint), resume
    it each time with `vlmq online --resume`, and compare with an uninterrupted run of the same config: the same
    metrics (time aside), the same parameters (LoRA, critic, target, PopArt, whitening), the same buffer (every
    finished episode once, in the same order), optimizer and counters."""
    epochs = 8
    common = online_overrides(tiny_folders["llama"], tmp_path, epochs=epochs)
    assert cli.main(["collect", *common, "--quiet"]) == 0
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    ref = _cli_process([*common, f"run_dir={straight}"])
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    rng = np.random.default_rng(0)
    kills = 0
    while True:  # the first start (and any start killed before it saved config.yaml) with the config's overrides
        started = (killed / "config.yaml").is_file()
        proc = _cli_process(["--resume", str(killed)] if started else [*common, f"run_dir={killed}"])
        done = len(load_history(killed, key="epoch"))  # kill once it has done 1..half of the rest, plus
        target = done + int(rng.integers(1, max(2, (epochs - done) // 2 + 1)))
        while proc.poll() is None and len(load_history(killed, key="epoch")) < target:
            time.sleep(0.01)
        if kills % 2 == 0:  # the moment an episode is stored, before the epoch's checkpoint: stored, not yet saved
            newest = _newest_shard(killed / "buffer")
            while proc.poll() is None and _newest_shard(killed / "buffer") == newest:
                time.sleep(0.005)
        else:  # a random moment: collecting, updating, evaluating or checkpointing
            time.sleep(float(rng.uniform(0, 0.4)))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert kills < 12, "the run never finished"
    assert kills >= 3, f"only {kills} kills landed; the run is too short for this test"

    assert _rows_without_time(killed) == _rows_without_time(straight)
    a, b = (load_checkpoint(d, device="cpu").state_dict() for d in (straight, killed))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = (torch.load(d / "checkpoint" / "online.pt", weights_only=False)["ranks"][0] for d in (straight, killed))
    assert sa["online"] == sb["online"] and sa["numpy_rng"] == sb["numpy_rng"]  # seeds, counters, episodes in flight
    assert torch.equal(sa["torch_rng"], sb["torch_rng"])
    ta, tb = (torch.load(d / "checkpoint" / "trainer.pt", weights_only=False) for d in (straight, killed))
    assert ta["step"] == tb["step"] == 2 * epochs and ta["numpy_rng"] == tb["numpy_rng"]
    assert torch.equal(ta["torch_rng"], tb["torch_rng"])
    for pa, pb in zip(ta["optimizer"]["state"].values(), tb["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    ba, bb = TurnBuffer(straight / "buffer"), TurnBuffer(killed / "buffer")
    ids = [t.episode_id for t in bb.turns]
    assert [t.episode_id for t in ba.turns] == ids and ba.turns == bb.turns
    episodes = [eid for i, eid in enumerate(ids) if i == 0 or ids[i - 1] != eid]
    assert len(episodes) == len(set(episodes))  # no episode stored twice
    assert config.load(type(load_config(None)), killed / "config.yaml").run_dir == str(killed)


def test_the_offline_epochs_are_the_offline_run_of_vlmq_train(tmp_path, tiny_folders):
    """An online run's offline epochs (2 x 2 updates) train exactly as `vlmq train` with 4 updates on the same
    config: checkpoint-offline equals the offline run's checkpoint, tensor for tensor; and continuing that offline
    run online (`online.init_from`) equals the online run's epoch after its offline ones."""
    common = online_overrides(tiny_folders["llama"], tmp_path) + ["online.offline_epochs=2", "online.eval_every=0"]
    assert cli.main(["collect", *common, "--quiet"]) == 0
    assert cli.main(["online", *common, "online.epochs=3", "--quiet"]) == 0
    offline = tmp_path / "offline"
    assert cli.main(["train", *common, f"run_dir={offline}", "train.steps=4", "eval.episodes=0", "--quiet"]) == 0
    a = load_checkpoint(tmp_path / "run" / "checkpoint-offline", device="cpu").state_dict()
    b = load_checkpoint(offline, device="cpu").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    online = load_checkpoint(tmp_path / "run", device="cpu").state_dict()
    assert any(not torch.equal(online[k], a[k]) for k in a)  # and the online epoch moved on from there
    # Continuing that offline run online instead (online.init_from: its weights, update counter, optimizer and RNG
    # states) is the same run as the offline epochs followed by the online one.
    started = tmp_path / "started"
    assert cli.main(["online", *common, f"run_dir={started}", f"online.init_from={offline}", "online.epochs=1",
                     "online.offline_epochs=0", "--quiet"]) == 0  # fmt: skip
    c = load_checkpoint(started, device="cpu").state_dict()
    for k in online:
        assert torch.equal(c[k], online[k]), k
    ta, tc = (torch.load(d / "checkpoint" / "trainer.pt", weights_only=False) for d in (tmp_path / "run", started))
    assert ta["step"] == tc["step"] == 6 and ta["numpy_rng"] == tc["numpy_rng"]
    for pa, pc in zip(ta["optimizer"]["state"].values(), tc["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(pa[k], pc[k]) for k in pa)
    assert cli.main(["online", *common, f"run_dir={tmp_path / 'none'}", f"online.init_from={tmp_path}"]) == 2


def test_scores_are_cached_per_checkpoint_and_a_continued_run_is_scored_again(tmp_path, tiny_folders):
    """`score_run` reuses a cached score only for the checkpoint it was taken from: continuing a run to more epochs
    scores its new last checkpoint again, while the unchanged offline checkpoint's score is read back."""
    from vlmq_core.experiments import score_run

    common = online_overrides(tiny_folders["llama"], tmp_path, epochs=2) + ["online.eval_every=0"]
    assert cli.main(["collect", *common, "--quiet"]) == 0
    assert cli.main(["online", *common, "--quiet"]) == 0
    cfg = load_config(None, common)
    first = score_run(cfg, 2, 500, progress=False)
    assert (first["offline"]["checkpoint_step"], first["online"]["checkpoint_step"]) == (2, 4)
    offline_file = tmp_path / "run" / "score-offline-s500-n2.json"
    marked = json.loads(offline_file.read_text()) | {"eval/success": 0.125}  # shows whether it is read back
    offline_file.write_text(json.dumps(marked))
    assert cli.main(["online", *common, "online.epochs=3", "--quiet"]) == 0
    second = score_run(load_config(None, [*common, "online.epochs=3"]), 2, 500, progress=False)
    assert second["offline"]["eval/success"] == 0.125 and second["online"]["checkpoint_step"] == 6
    assert json.loads((tmp_path / "run" / "score-online-s500-n2.json").read_text())["checkpoint_step"] == 6


def test_a_run_continued_with_a_full_fifo_buffer_logs_every_metric_as_the_uninterrupted_run(tmp_path, tiny_folders):
    """With the buffer at its FIFO cap its length stops changing while its content does: a run continued after
    epoch 2 logs the same rows, every column but time/ (the tokens/ ones read the data's current replies), as one
    run straight to epoch 4."""
    common = [*online_overrides(tiny_folders["llama"], tmp_path), "online.buffer_turns=12", "eval.episodes=0"]
    assert cli.main(["collect", *common, "--quiet"]) == 0
    straight, continued = tmp_path / "straight", tmp_path / "continued"
    assert cli.main(["online", *common, f"run_dir={straight}", "--quiet"]) == 0
    assert cli.main(["online", *common, f"run_dir={continued}", "online.epochs=2", "--quiet"]) == 0
    assert cli.main(["online", "--resume", str(continued), "online.epochs=4", "--quiet"]) == 0
    rows = _rows_without_time(straight)
    assert [r["buffer/turns"] for r in rows] == [12] * 4  # full from the start: only its content changes
    assert any(k.startswith("tokens/") for k in rows[-1])
    assert _rows_without_time(continued) == rows
