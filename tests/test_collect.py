"""Batched collection, strategies, evaluation summaries and resumable dataset building."""

import pytest
import torch

from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, EpisodeResult, collect, collect_missing, evaluate, summarize
from vlmq_core.model import Policy, PolicyConfig
from vlmq_core.tiny import tiny_llama


@pytest.fixture(scope="module")
def tiny_policy():
    model, tok = tiny_llama(seed=0)
    torch.manual_seed(0)
    return Policy(model, tok, False, PolicyConfig(), name="tiny-llama")


def test_random_collection_fills_buffer_with_complete_episodes(tmp_path):
    buf = TurnBuffer(tmp_path / "d")
    res = collect(None, CollectConfig(strategy="random", num_envs=3), 7, seed=5, buffer=buf, progress=False)
    assert [r.seed for r in res] == list(range(5, 12))
    eps = buf.episodes()
    assert len(eps) == 7
    for turns in eps.values():
        assert [t.t for t in turns] == list(range(len(turns)))
        assert turns[-1].done and not any(t.done for t in turns[:-1])
        assert all(t.valid and t.source == "random" and t.strategy == "random" for t in turns)
        assert all(t.image is not None and t.pil_image().size == (300, 300) for t in turns)
        assert all(t.reply.startswith("[action]") and "Observation:" in t.prompt for t in turns)
    assert sum(r.length for r in res) == len(buf)
    assert TurnBuffer(tmp_path / "d").stats()["buffer/episodes"] == 7  # flushed to disk


def test_collection_is_reproducible_for_a_seed():
    cfg = CollectConfig(strategy="random", num_envs=2)
    a = collect(None, cfg, 5, seed=3, progress=False)
    b = collect(None, cfg, 5, seed=3, progress=False)
    c = collect(None, cfg, 5, seed=4, progress=False)
    key = [(r.ret, r.length, r.success) for r in a]
    assert key == [(r.ret, r.length, r.success) for r in b]
    assert key != [(r.ret, r.length, r.success) for r in c]


def test_collect_missing_tops_up_and_resumes(tmp_path):
    buf = TurnBuffer(tmp_path / "d")
    cfg = CollectConfig(strategy="random", num_envs=2)
    assert len(collect_missing(None, cfg, buf, 3, seed=0)) == 3
    more = collect_missing(None, cfg, buf, 5, seed=0)
    assert [r.seed for r in more] == [3, 4]  # continues on the next seeds
    assert collect_missing(None, cfg, TurnBuffer(tmp_path / "d"), 5, seed=0) == []
    assert len(buf.episodes()) == 5


def test_model_strategies_batch_and_prefill(tiny_policy):
    res = collect(tiny_policy, CollectConfig(strategy="min_format", num_envs=3, max_reply_tokens=4), 4, progress=False)
    assert len(res) == 4
    buf_turns = []

    class Sink:
        def add(self, turns):
            buf_turns.extend(turns)

        def flush(self):
            pass

    collect(
        tiny_policy,
        CollectConfig(strategy="min_format", num_envs=2, max_reply_tokens=3),
        2,
        buffer=Sink(),
        progress=False,
    )
    assert buf_turns and all(t.reply.startswith("[action]") for t in buf_turns)
    assert all(t.source == "tiny-llama" and t.strategy == "min_format" for t in buf_turns)
    assert all(t.image is None for t in buf_turns) is False  # images are kept in the dataset for any model


def test_evaluate_and_summarize(tiny_policy):
    m = evaluate(tiny_policy, CollectConfig(num_envs=2, max_reply_tokens=3), 2, progress=False)
    assert set(m) == {"eval/success", "eval/valid", "eval/return", "eval/length", "eval/episodes"}
    assert m["eval/episodes"] == 2 and 0 <= m["eval/valid"] <= 1
    s = summarize([EpisodeResult("a", 0, 1.0, 2, True, 2), EpisodeResult("b", 1, -14.0, 3, False, 0)])
    assert s["eval/success"] == 0.5 and s["eval/valid"] == pytest.approx(2 / 5) and s["eval/return"] == -6.5


def test_bad_configuration_is_reported():
    with pytest.raises(ValueError, match="strategy"):
        CollectConfig(strategy="greedy")
    with pytest.raises(ValueError, match="needs a policy"):
        collect(None, CollectConfig(strategy="agent"), 1, progress=False)
    with pytest.raises(ValueError, match="No finished episodes"):
        summarize([])


@pytest.mark.parametrize("task", ["NumberLine", "EZPoints", "BabyAI-GoToRedBall"])
def test_oracle_strategy_builds_datasets_of_known_quality(tmp_path, task):
    clean = TurnBuffer(tmp_path / "clean")
    cfg = CollectConfig(task=task, strategy="oracle", num_envs=3)
    res = collect(None, cfg, 6, seed=0, buffer=clean, progress=False)
    assert summarize(res)["eval/success"] == 1.0 and summarize(res)["eval/valid"] == 1.0
    assert {t.source for t in clean.turns} == {"oracle@0"} and {t.strategy for t in clean.turns} == {"oracle"}
    noisy = collect(
        None,
        CollectConfig(task=task, strategy="oracle", num_envs=3, oracle_corrupt_rate=1.0, oracle_thought=True),
        6,
        seed=0,
        progress=False,
    )
    assert summarize(noisy)["eval/success"] < 1.0


def test_oracle_corrupt_rate_validated():
    with pytest.raises(ValueError, match="corrupt_rate"):
        CollectConfig(strategy="oracle", oracle_corrupt_rate=1.5)
