"""MiniWoB++ through BrowserGym on a real Chromium (Debian's): the wrapper's rules, no orphan browsers, crashes.

These start real browsers (a reset takes ~2 s, a step ~0.3 s); they run in the README's test command and in CI,
which install Chromium when it is missing (``apt-get install -y chromium``).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, SourceConfig, collect
from vlmq_core.config import ConfigError
from vlmq_core.envs import MINIWOB_TASKS, make_env
from vlmq_core.envs import miniwob as web
from vlmq_core.envs.oracles import OracleConfig, oracle_reply
from vlmq_core.envs.web_actions import ACTIONS


def chromium_pids() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if "chrom" in (p.info["name"] or "").lower()}


def wait_until_gone(pids: set[int], seconds: float = 20.0) -> set[int]:
    """The processes of `pids` still alive after waiting up to `seconds` for them to exit."""
    end = time.time() + seconds
    while time.time() < end:
        alive = pids & chromium_pids()
        if not alive:
            return alive
        time.sleep(0.2)
    return pids & chromium_pids()


@pytest.fixture(scope="module")
def env():
    env = make_env("MiniWoB-click-test")
    yield env
    env.close()


def test_click_test_episode_through_the_text_wrapper(env):
    obs, _ = env.reset(seed=0)
    assert obs["text"].startswith("Goal: Click the button.\nPage:\n") and "[13] button 'Click Me!'" in obs["text"]
    assert "url='click-test.html'" in obs["text"] and "/site-packages/" not in obs["prompt"]  # no machine paths
    assert obs["image"].size == (498, 321) and np.asarray(obs["image"]).std() > 0  # a real screenshot
    # an element that is not on the page: parsed, refused by the page, counted as invalid with the reason
    obs, reward, terminated, truncated, info = env.step('[action] click("999")')
    assert (reward, terminated, truncated, info["valid"]) == (-2.0, False, False, False)
    assert 'the page refused it (ValueError: Could not find element with bid "999")' in info["error"]
    assert "the page refused it" in obs["prompt"]
    # hostile text never reaches the page
    obs, reward, _, _, info = env.step("[action] __import__('os').system('touch /tmp/vlmq_pwned')")
    assert reward == -2.0 and not info["valid"] and "is not one call of click" in info["error"]
    # the one element there, as a random valid action would pick it
    reply = env.random_reply(np.random.default_rng(0))
    assert reply == '[action] click("13")'
    _, reward, terminated, _, info = env.step(reply)
    assert (reward, terminated, info["valid"], info["success"]) == (1.0, True, True, True)


def test_table_4_miniwob_column_five_invalid_replies_end_the_episode(env):
    env.reset(seed=1)
    rewards = []
    for _ in range(5):
        _, reward, terminated, truncated, _ = env.step("click the button")
        rewards.append(reward)
    assert rewards == [-2.0, -2.0, -2.0, -2.0, -10.0] and terminated and not truncated
    # refusals and parse failures make one streak
    env.reset(seed=1)
    replies = ['[action] click("999")', "no tag", '[action] click("998")', "[action] os.system('x')"]
    assert [env.step(r)[1] for r in replies] == [-2.0] * 4
    _, reward, terminated, _, _ = env.step('[action] hover("997")')
    assert reward == -10.0 and terminated


def test_allowed_calls_run_in_browsergym(env):
    from browsergym.core.action.highlevel import HighLevelActionSet

    assert set(ACTIONS) <= set(HighLevelActionSet(subsets=["bid"]).action_set)  # every allowed name can run
    env.reset(seed=4)
    for reply in ('hover("13")', 'focus("13")', "scroll(0, 20)", "noop(wait_ms=10)"):
        _, reward, terminated, _, info = env.step(f"[action] {reply}")
        assert (reward, terminated, info["valid"]) == (0.0, False, True), (reply, info["error"])
    _, reward, _, _, info = env.step('[action] fill("13", "text")')  # a button is not a text field
    assert reward == -2.0 and "the page refused it" in info["error"]


def test_env_rejects_a_call_our_parser_did_not_write(env):
    env.reset(seed=2)
    inner = env.unwrapped
    _, _, _, _, state = inner.step("click('13'); import os")  # straight into the raw env, bypassing the wrapper
    assert "refused an action vlmq's parser did not write" in state["action_error"]


def test_a_browser_that_dies_mid_episode_ends_the_episode_and_the_next_reset_recovers(env):
    before = chromium_pids()
    env.close()
    env.reset(seed=3)
    ours = chromium_pids() - before
    assert ours, "the reset started no Chromium"
    for pid in ours:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert not wait_until_gone(ours)
    _, reward, terminated, truncated, info = env.step('[action] click("13")')
    assert truncated and not terminated and reward == 0.0 and info["state"]["browser_crash"]
    restarts = env.unwrapped.restarts
    obs, _ = env.reset(seed=3)  # a new browser
    assert "[13] button 'Click Me!'" in obs["text"] and env.unwrapped.restarts >= restarts
    _, reward, terminated, _, _ = env.step('[action] click("13")')
    assert reward == 1.0 and terminated


ORPHAN_SCRIPT = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even when the suite runs with
# SIGINT ignored (a background job of a non-interactive shell starts so, and its children inherit it)
from vlmq_core.envs import make_env
env = make_env("MiniWoB-click-test")
env.reset(seed=0)
print("ready", flush=True)
if sys.argv[1] == "close":
    env.close()
elif sys.argv[1] == "raise":
    raise RuntimeError("a crash of the run, not of the browser")
elif sys.argv[1] == "wait":  # a run at work: short waits (a signal taken by another thread waits for the next)
    for _ in range(1200):
        time.sleep(0.1)
"""


@pytest.mark.parametrize(
    ("mode", "sig"),
    [("close", None), ("exit", None), ("raise", None), ("wait", signal.SIGINT), ("wait", signal.SIGKILL)],
)
def test_no_orphan_chromium_after_any_exit(mode, sig):
    """Close, plain exit, an exception, Ctrl-C and kill -9 all leave no Chromium behind."""
    before = chromium_pids()
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        ours = chromium_pids() - before
        assert len(ours) >= 2, "the env started no Chromium"
        if sig is not None:
            proc.send_signal(sig)
        proc.wait(60)
    finally:
        proc.kill()
    assert not wait_until_gone(ours), f"{mode}/{sig}: Chromium processes outlived their run"


def test_missing_chromium_is_one_sentence_with_the_fix(monkeypatch):
    monkeypatch.setenv("VLMQ_CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(web.BrowserUnavailable, match="is not an executable file; point it at Chromium"):
        web.chromium_executable()
    monkeypatch.delenv("VLMQ_CHROMIUM")
    monkeypatch.setattr(web.os.path, "isfile", lambda path: False)
    with pytest.raises(web.BrowserUnavailable, match=r"apt-get install -y chromium"):
        web.chromium_executable()


def test_unknown_task_and_page_kind():
    with pytest.raises(ValueError, match="unknown MiniWoB task 'click-nothing'.*click-test"):
        web.MiniWoBEnv("click-nothing")
    with pytest.raises(ValueError, match="page must be 'axtree' or 'html'"):
        web.MiniWoBEnv("click-test", page="pdf")


def test_page_elements_reads_the_accessibility_tree_lines():
    text = "Goal: x\nPage:\nRootWebArea 'T', focused\n\t[24] radio 'Q\\'S', checked='false'\n"
    text += "\t\tStaticText 'Q'\n[7] button ''"
    assert web.page_elements(text) == [("24", "radio", "Q\\'S", ", checked='false'"), ("7", "button", "", "")]


def test_the_demonstrator_solves_each_of_its_tasks():
    """Ten of the 27 tasks have a scripted demonstrator (the oracle strategy); each wins seed 0 within 6 steps."""
    assert len(web.DEMONSTRATIONS) == 10 and set(web.DEMONSTRATIONS) < set(MINIWOB_TASKS)
    rng = np.random.default_rng(0)
    for task in web.DEMONSTRATIONS:
        env = make_env(f"MiniWoB-{task}")
        try:
            env.reset(seed=0)
            for _ in range(6):
                _, reward, terminated, truncated, info = env.step(oracle_reply(env, rng, OracleConfig(thought=True)))
                assert info["valid"], (task, info["error"])
                if terminated or truncated:
                    break
            assert info["success"] and reward == 1.0, task
        finally:
            env.close()


def test_datasets_from_every_web_source(tmp_path, llama_policy):
    """random (a click on a visible element), the demonstrator (corrupted half the time) and the model with a
    random function prefilled (``partial``) write tagged turns with screenshots; a VLM-free model reads the text."""
    cfg = CollectConfig(task="MiniWoB-click-button", num_envs=2, max_reply_tokens=6)
    buffer = TurnBuffer(tmp_path / "data")
    sources = [
        SourceConfig("random", 2, 0),
        SourceConfig("oracle", 2, 100, corrupt_rate=0.5),
        SourceConfig("partial", 2, 200),
    ]
    for source in sources:
        collect(llama_policy if source.needs_model else None, cfg, source, buffer, progress=False)
    turns = buffer.turns
    assert {t.strategy for t in turns} == {"random", "oracle", "partial"}
    assert {t.source for t in turns} == {"random", "oracle@0.5", llama_policy.name}
    assert all(t.image and t.obs.startswith("Goal: Click on the ") for t in turns)
    random_turns = [t for t in turns if t.strategy == "random"]
    assert all(t.valid and re.fullmatch(r'\[action\] click\("[A-Za-z0-9]+"\)', t.reply) for t in random_turns)
    names = "|".join(ACTIONS)
    assert all(re.match(rf"\[action\] ({names})\(", t.reply) for t in turns if t.strategy == "partial")
    # the same seeds give the same random and oracle episodes
    again = TurnBuffer(tmp_path / "again")
    for source in sources[:2]:
        collect(None, cfg, source, again, progress=False)
    first = [(t.seed, t.t, t.reply) for t in turns if t.strategy != "partial"]
    assert sorted(first) == sorted((t.seed, t.t, t.reply) for t in again.turns)


def test_partial_needs_a_task_with_call_actions(llama_policy):
    with pytest.raises(ConfigError, match="strategy 'partial' needs a task whose actions are calls"):
        collect(llama_policy, CollectConfig(task="NumberLine", num_envs=1), SourceConfig("partial", 1, 0), None)


def test_parallel_web_envs_are_capped_by_free_memory(capsys):
    from vlmq_core.collect import memory_cap

    need = web.MiniWoBEnv.MEMORY_GB
    assert memory_cap("MiniWoB-click-test", 8, free_gb=2.5 * need) == 2
    assert "8 envs need" in capsys.readouterr().out
    assert memory_cap("MiniWoB-click-test", 8, free_gb=0.1) == 1  # one always runs
    assert memory_cap("MiniWoB-click-test", 2, free_gb=100 * need) == 2
    assert memory_cap("NumberLine", 64, free_gb=0.1) == 64  # tasks without browsers are not capped
