"""Batched collection, strategies, evaluation summaries, resumable dataset building, and a collection killed
with SIGKILL that loses no finished episode."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import (
    CollectConfig,
    DataConfig,
    EpisodeResult,
    EvalConfig,
    SourceConfig,
    build_dataset,
    collect,
    evaluate,
    summarize,
)
from vlmq_core.config import ConfigError
from vlmq_core.model import Policy, PolicyConfig
from vlmq_core.tiny import tiny_llama


@pytest.fixture(scope="module")
def tiny_policy():
    model, tok = tiny_llama(seed=0)
    torch.manual_seed(0)
    return Policy(model, tok, False, PolicyConfig(), name="tiny-llama")


def test_random_collection_fills_buffer_with_complete_episodes(tmp_path):
    buf = TurnBuffer(tmp_path / "d")
    res = collect(None, CollectConfig(num_envs=3), SourceConfig("random", 7, 5), buffer=buf, progress=False)
    assert [r.seed for r in res] == list(range(5, 12))
    eps = buf.episodes()
    assert len(eps) == 7 and sorted(turns[0].seed for turns in eps.values()) == list(range(5, 12))
    for turns in eps.values():
        assert [t.t for t in turns] == list(range(len(turns)))
        assert turns[-1].done and not any(t.done for t in turns[:-1])
        assert all(t.valid and t.source == "random" and t.strategy == "random" for t in turns)
        assert all(t.image is not None and t.pil_image().size == (300, 300) for t in turns)
        assert all(t.reply.startswith("[action]") and "Observation:" in t.prompt for t in turns)
    assert sum(r.length for r in res) == len(buf)
    assert TurnBuffer(tmp_path / "d").stats()["buffer/episodes"] == 7  # on disk


def episode_keys(buf: TurnBuffer) -> dict[int, list[tuple[str, float]]]:
    """seed -> the episode's (reply, reward) per turn."""
    return {turns[0].seed: [(t.reply, t.reward) for t in turns] for turns in buf.episodes().values()}


def test_an_episode_depends_on_its_seed_alone(tmp_path):
    """Random (and oracle) replies draw from a generator seeded by the episode's seed: the same episodes whatever
    the number of environments or the other seeds collected with them."""
    a, b = TurnBuffer(tmp_path / "a"), TurnBuffer(tmp_path / "b")
    collect(None, CollectConfig(num_envs=2), SourceConfig("random", 6, 3), buffer=a, progress=False)
    collect(None, CollectConfig(num_envs=5), SourceConfig("random"), buffer=b, seeds=[8, 5, 3], progress=False)
    ka, kb = episode_keys(a), episode_keys(b)
    assert all(ka[s] == kb[s] for s in (3, 5, 8))
    assert ka[3] != ka[4]  # ...and different seeds give different episodes


def test_build_dataset_tops_up_exactly_the_missing_seeds(tmp_path):
    buf = TurnBuffer(tmp_path / "d")
    play = CollectConfig(num_envs=2)
    data = DataConfig(sources=[SourceConfig("random", 3, 0), SourceConfig("oracle", 2, 100, corrupt_rate=0.5)])
    assert list(build_dataset(None, play, data, buf, progress=False).values()) == [3, 2]
    data.sources[0].episodes = 5
    assert list(build_dataset(None, play, data, buf, progress=False).values()) == [2, 0]  # seeds 3, 4 only
    assert list(build_dataset(None, play, data, TurnBuffer(tmp_path / "d"), progress=False).values()) == [0, 0]
    seeds = sorted((t[0].source, t[0].seed) for t in buf.episodes().values())
    assert seeds == [("oracle@0.5", 100), ("oracle@0.5", 101)] + [("random", s) for s in range(5)]
    with pytest.raises(ValueError, match="needs a policy"):
        build_dataset(None, play, DataConfig(sources=[SourceConfig("agent", 1, 0)]), buf, progress=False)


def test_one_dataset_over_several_tasks(tmp_path):
    """A source may name its own task; each (task, source, seed) is topped up on its own."""
    buf = TurnBuffer(tmp_path / "d")
    play = CollectConfig(task="NumberLine", num_envs=2)
    data = DataConfig(sources=[SourceConfig("random", 2, 0), SourceConfig("random", 3, 0, task="Blackjack")])
    assert list(build_dataset(None, play, data, buf, progress=False).values()) == [2, 3]
    data.sources.append(SourceConfig("oracle", 1, 0, task="Blackjack"))
    done = build_dataset(None, play, data, buf, progress=False)
    assert list(done.values()) == [0, 0, 1] and "Blackjack: oracle@0/oracle seeds 0+" in done
    tasks = sorted((t[0].task, t[0].strategy, t[0].seed) for t in buf.episodes().values())
    assert tasks == [("vlmq/Blackjack-v0", "oracle", 0)] + [("vlmq/Blackjack-v0", "random", s) for s in range(3)] + [
        ("vlmq/NumberLine-v0", "random", s) for s in range(2)
    ]
    with pytest.raises(ConfigError, match="A source's task: unknown task 'Blackjak'"):
        SourceConfig("random", 1, 0, task="Blackjak")


def test_model_strategies_batch_and_prefill(tiny_policy, tmp_path):
    play = CollectConfig(num_envs=3, max_reply_tokens=4)
    buf = TurnBuffer(tmp_path / "d")
    res = collect(tiny_policy, play, SourceConfig("min_format", 4, 0), buffer=buf, progress=False)
    assert len(res) == 4 and len(buf.episodes()) == 4
    assert all(t.reply.startswith("[action]") for t in buf.turns)
    assert all(t.source == "tiny-llama" and t.strategy == "min_format" for t in buf.turns)
    assert all(t.image is not None for t in buf.turns)  # images are kept in the dataset for any model


def test_evaluate_and_summarize(tiny_policy):
    m = evaluate(tiny_policy, CollectConfig(num_envs=2, max_reply_tokens=3), EvalConfig(2, 10), progress=False)
    assert set(m) == {f"eval/{k}" for k in ("success", "success_se", "valid", "return", "length", "episodes")}
    assert m["eval/episodes"] == 2 and 0 <= m["eval/valid"] <= 1
    s = summarize([EpisodeResult("a", 0, 1.0, 2, True, 2), EpisodeResult("b", 1, -14.0, 3, False, 0)])
    assert s["eval/success"] == 0.5 and s["eval/valid"] == pytest.approx(2 / 5) and s["eval/return"] == -6.5
    assert s["eval/success_se"] == pytest.approx(0.5 / 2**0.5)


def test_evaluation_batch_width(tiny_policy, monkeypatch):
    """``eval.num_envs`` widens the evaluation's batch; greedy results do not depend on it."""
    import vlmq_core.collect as collect_module

    widths = []
    real = collect_module.EnvSlots

    def spy(cfg, n, *args, **kwargs):
        widths.append(n)
        return real(cfg, n, *args, **kwargs)

    monkeypatch.setattr(collect_module, "EnvSlots", spy)
    cfg = CollectConfig(num_envs=1, max_reply_tokens=3, temperature=0.0)
    narrow = evaluate(tiny_policy, cfg, EvalConfig(4, 10), progress=False)
    wide = evaluate(tiny_policy, cfg, EvalConfig(4, 10, num_envs=4), progress=False)
    assert widths == [1, 4]
    assert narrow == wide
    with pytest.raises(ConfigError, match="eval.num_envs"):
        EvalConfig(4, 10, num_envs=0)


def test_bad_configuration_is_reported():
    with pytest.raises(ConfigError, match="strategy"):
        SourceConfig(strategy="greedy")
    with pytest.raises(ConfigError, match="unknown task 'Nope'"):
        CollectConfig(task="Nope")
    with pytest.raises(ValueError, match="needs a policy"):
        collect(None, CollectConfig(), SourceConfig("agent", 1, 0), progress=False)
    with pytest.raises(ValueError, match="No finished episodes"):
        summarize([])
    with pytest.raises(ValueError, match="corrupt_rate"):
        SourceConfig("oracle", corrupt_rate=1.5)


def test_babyai_can_be_played_from_its_point_of_view(tmp_path):
    buf = TurnBuffer(tmp_path / "d")
    pov = CollectConfig(task="BabyAI-GoToRedBall", num_envs=2, view="pov")
    collect(None, pov, SourceConfig("random", 2, 0), buffer=buf, progress=False)
    assert all(t.pil_image().size == (224, 224) for t in buf.turns)  # 7x7 cells of 32 px
    full = TurnBuffer(tmp_path / "f")
    collect(
        None,
        CollectConfig(task="BabyAI-GoToRedBall", num_envs=2),
        SourceConfig("random", 2, 0),
        buffer=full,
        progress=False,
    )
    assert [t.reply for t in full.turns] == [t.reply for t in buf.turns]  # the same episodes, another picture
    assert all(t.pil_image().size != (224, 224) for t in full.turns)
    with pytest.raises(ConfigError, match="^collect.view=pov is a BabyAI view; NumberLine has one image"):
        CollectConfig(view="pov")
    with pytest.raises(ConfigError, match="collect.view"):
        CollectConfig(task="BabyAI-GoToRedBall", view="side")


@pytest.mark.parametrize("task", ["NumberLine", "EZPoints", "BabyAI-GoToRedBall"])
def test_oracle_strategy_builds_datasets_of_known_quality(tmp_path, task):
    clean = TurnBuffer(tmp_path / "clean")
    res = collect(None, CollectConfig(task=task, num_envs=3), SourceConfig("oracle", 6, 0), clean, progress=False)
    assert summarize(res)["eval/success"] == 1.0 and summarize(res)["eval/valid"] == 1.0
    assert {t.source for t in clean.turns} == {"oracle@0"} and {t.strategy for t in clean.turns} == {"oracle"}
    noisy = SourceConfig("oracle", 6, 0, corrupt_rate=1.0, thought=True)
    assert summarize(collect(None, CollectConfig(task=task, num_envs=3), noisy, progress=False))["eval/success"] < 1


COLLECTOR = textwrap.dedent(
    """
    import sys
    from vlmq_core.buffer import TurnBuffer
    from vlmq_core.collect import CollectConfig, DataConfig, SourceConfig, build_dataset

    class Reporting(TurnBuffer):
        def add(self, turns):
            super().add(turns)  # returns once the episode is on disk
            print(turns[0].episode_id, turns[0].seed, len(turns), flush=True)

    buf = Reporting(sys.argv[1], compact_every=4)
    data = DataConfig(sources=[SourceConfig("random", 30, 0), SourceConfig("oracle", 15, 500, corrupt_rate=0.3)])
    build_dataset(None, CollectConfig(task="EZPoints", num_envs=3, use_images=False), data, buf, progress=False)
    print("done", flush=True)
    """
)


def test_collection_killed_with_sigkill_loses_no_finished_episode_and_resumes_exactly(tmp_path):
    """SIGKILL a collecting subprocess at random moments, several times; after each kill every episode it reported
    finished is on disk, complete and stored once, and every shard reads; the same command then resumes. The
    final dataset equals an uninterrupted collection's (random and oracle episodes depend on their seed alone)."""
    folder = tmp_path / "data"
    script = tmp_path / "collect.py"
    script.write_text(COLLECTOR)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    rng = random.Random(0)
    reported: dict[str, int] = {}
    kills = 0
    for _ in range(30):
        proc = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True, env=env)
        lines, wanted = [], rng.randint(1, 8)  # kill after a random number of finished episodes...
        while len(lines) < wanted and (line := proc.stdout.readline()):
            lines.append(line.strip())
        time.sleep(rng.uniform(0.0, 0.03))  # ...plus a random fraction of an episode (writes, compactions)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        out = "\n".join(lines) + "\n" + proc.communicate()[0]
        finished = [line.split() for line in out.splitlines() if line.strip() and line.strip() != "done"]
        reported |= {eid: int(n) for eid, _, n in finished}
        buf = TurnBuffer(folder)  # every shard must read; a killed compaction is resolved here
        episodes = buf.episodes()
        for eid, n in reported.items():
            assert eid in episodes and len(episodes[eid]) == n, eid
            turns = episodes[eid]
            assert [t.t for t in turns] == list(range(n)) and turns[-1].done
        keys = [(t.episode_id, t.t) for t in buf.turns]
        assert len(keys) == len(set(keys))  # nothing stored twice
        per_seed = [(turns[0].source, turns[0].seed) for turns in episodes.values()]
        assert len(per_seed) == len(set(per_seed))  # no seed collected twice
        if "done" in out:
            break
    assert kills >= 3 and "done" in out
    final = TurnBuffer(folder)
    assert len(final.episodes()) == 45
    straight = TurnBuffer(tmp_path / "straight")
    data = DataConfig(sources=[SourceConfig("random", 30, 0), SourceConfig("oracle", 15, 500, corrupt_rate=0.3)])
    build_dataset(None, CollectConfig(task="EZPoints", num_envs=3, use_images=False), data, straight, progress=False)
    assert episode_keys(final) == episode_keys(straight)
