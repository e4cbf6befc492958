"""NumberLine rules, rendering, prompts, the text-action parser and the reward wrapper."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from PIL import Image

from vlmq_core.envs import CATALOG, MINIWOB_TASKS, get_task, make_env
from vlmq_core.envs.numberline import NUMBERLINE_PROMPT, NumberLineEnv
from vlmq_core.envs.text_action import TextActionConfig, TextActionEnv, format_prompt, parse_action

ACTIONS = ["-", "+"]
LEFT, RIGHT = 0, 1


def env_at(target: int, current: int) -> NumberLineEnv:
    """A reset NumberLine env forced into a given state."""
    env = NumberLineEnv()
    env.reset(seed=0)
    env.target, env.current = target, current
    return env


# ---------------------------------------------------------------- NumberLine rules


def test_reaching_target_gives_plus_one_and_terminates():
    env = env_at(target=3, current=2)
    _, reward, terminated, truncated, info = env.step(RIGHT)
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info == {"target": 3, "current": 3, "steps": 1}


def test_moving_away_gives_minus_one():
    env = env_at(target=3, current=2)
    _, reward, terminated, _, info = env.step(LEFT)
    assert (reward, terminated, info["current"]) == (-1.0, False, 1)


@pytest.mark.parametrize(("target", "current", "action"), [(3, 0, LEFT), (2, 5, RIGHT)])
def test_clamped_at_border_gives_minus_one(target, current, action):
    env = env_at(target=target, current=current)
    _, reward, terminated, _, info = env.step(action)
    assert (reward, terminated, info["current"]) == (-1.0, False, current)


def test_approaching_gives_zero():
    env = env_at(target=0, current=4)
    _, reward, terminated, _, info = env.step(LEFT)
    assert (reward, terminated, info["current"]) == (0.0, False, 3)


def test_truncated_after_ten_steps():
    env = env_at(target=5, current=0)
    for step in range(1, 11):
        _, _, terminated, truncated, info = env.step(LEFT)
        assert not terminated
        assert truncated == (step == 10)
        assert info["steps"] == step


def test_reset_state_valid_and_in_info():
    env = NumberLineEnv()
    for seed in range(50):
        _, info = env.reset(seed=seed)
        assert info["steps"] == 0
        assert 0 <= info["target"] <= 5 and 0 <= info["current"] <= 5
        assert info["target"] != info["current"]


def test_reset_seed_reproduces_start_and_trajectory():
    def rollout(seed: int) -> list:
        env = NumberLineEnv()
        obs, info = env.reset(seed=seed)
        trace = [(info, obs.tobytes())]
        actions = np.random.default_rng(seed).integers(0, 2, size=10)
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(int(action))
            trace.append((info, obs.tobytes(), reward, terminated, truncated))
            if terminated or truncated:
                break
        return trace

    for seed in (0, 1, 7):
        assert rollout(seed) == rollout(seed)


def test_different_seeds_give_different_starts():
    env = NumberLineEnv()
    starts = {tuple(env.reset(seed=seed)[1].values()) for seed in range(8)}
    assert len(starts) > 1


def test_gymnasium_make():
    assert "vlmq/NumberLine-v0" in gymnasium.registry
    env = gymnasium.make("vlmq/NumberLine-v0")
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    env.step(env.action_space.sample())
    assert isinstance(env.unwrapped, NumberLineEnv)


def test_registering_again_is_silent():
    import importlib
    import warnings

    import vlmq_core
    from vlmq_core.envs import register_envs

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered twice
        register_envs()
        importlib.reload(vlmq_core)


def test_importing_vlmq_core_registers_every_id_and_imports_nothing_heavy():
    """``import vlmq_core`` registers every task's gymnasium id without importing torch, minigrid or any task
    module; making an env imports only what that task needs."""
    import subprocess
    import sys

    code = (
        "import sys, gymnasium, vlmq_core\n"
        "from vlmq_core.envs import CATALOG\n"
        "ids = [f'vlmq/{n}-v0' for n in CATALOG]\n"
        "assert all(i in gymnasium.registry for i in ids), ids\n"
        "heavy = ('torch', 'transformers', 'minigrid', 'PIL', 'vlmq_core.envs.numberline')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "gymnasium.make('vlmq/NumberLine-v0')\n"
        "assert 'vlmq_core.envs.numberline' in sys.modules and 'minigrid' not in sys.modules\n"
        "gymnasium.make('vlmq/BabyAI-GoToObj-v0')\n"
        "assert 'minigrid' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- rendering and text


def test_image_shape_and_render_match_observation():
    env = NumberLineEnv()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (300, 300, 3) and obs.dtype == np.uint8
    assert np.array_equal(env.render(), obs)


def test_images_differ_between_states():
    images = [env_at(t, c).render() for t, c in [(3, 1), (3, 2), (1, 3), (0, 5)]]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j])


def test_text_summary():
    assert env_at(target=3, current=1).text() == "Target: 3. Current: 1."


# ---------------------------------------------------------------- parse_action


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("[action] +", 1),
        ("[action] -", 0),
        ("[action]+", 1),
        ("[ACTION]:  +  ", 1),
        ("[Action] -\n", 0),
        ("**[action]** `-`", 0),
        ("**[action]:** +", 1),
        ("**[action]**: `+`", 1),
        ("[action] **+**", 1),
        ("[action] __-__", 0),
        ("[action]\n```\n+\n```", 1),
        ("[action] '+'", 1),
        ('[action] "-"', 0),
        ("I think so. [action] +", 1),
        ("[action] + [action] -", None),
        ("[action] + because it is closer", None),
        ("[action] ++", None),
        ("[action] +.", None),
        ("[action]", None),
        ("+", None),
        ("action: +", None),
        ("", None),
    ],
)
def test_parse_action(reply, expected):
    assert parse_action(reply, ACTIONS) == expected


# ---------------------------------------------------------------- prompts


def test_prompt_contents_and_length():
    task = NUMBERLINE_PROMPT
    prompt = format_prompt(task, "Target: 3. Current: 1.")
    assert task.example in prompt
    assert "followed by exactly one action" in prompt
    assert prompt.endswith("Target: 3. Current: 1.")
    assert "invalid" not in prompt
    assert len(prompt.split()) < 90
    with_error = format_prompt(task, "Target: 3. Current: 1.", error="no tag.")
    assert "Your previous reply was invalid: no tag." in with_error
    assert with_error.index("invalid") < with_error.index("Target: 3")


# ---------------------------------------------------------------- wrapper


def wrapper_at(target: int, current: int, config: TextActionConfig | None = None) -> TextActionEnv:
    """A text-action NumberLine env reset (by seed search) into a given start state."""
    env = make_env("NumberLine", text_config=config)
    for seed in range(10_000):
        _, info = env.reset(seed=seed)
        if (info["state"]["target"], info["state"]["current"]) == (target, current):
            return env
    raise AssertionError(f"no seed starts at target={target}, current={current}")


def test_wrapper_observation():
    env = make_env("vlmq/NumberLine-v0", seed=0)
    obs, info = env.reset()
    assert set(obs) == {"text", "image", "prompt"}
    assert isinstance(obs["image"], Image.Image) and obs["image"].size == (300, 300)
    assert obs["image"].mode == "RGB"
    assert obs["text"] == env.unwrapped.text()
    assert obs["prompt"] == format_prompt(NUMBERLINE_PROMPT, obs["text"])
    assert info["state"]["steps"] == 0 and info["error"] is None


def test_wrapper_valid_step():
    env = wrapper_at(target=3, current=2)
    obs, reward, terminated, truncated, info = env.step("[action] +")
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["valid"] and info["action"] == 1 and info["success"] and info["error"] is None
    assert obs["text"] == "Target: 3. Current: 3."


def test_wrapper_invalid_penalty_keeps_state_and_reports_error():
    env = wrapper_at(target=3, current=1)
    obs, reward, terminated, truncated, info = env.step("[action] + because")
    assert (reward, terminated, truncated) == (-2.0, False, False)
    assert not info["valid"] and info["action"] is None and not info["success"]
    assert info["state"] == {"target": 3, "current": 1, "steps": 0}
    assert "Your previous reply was invalid" in obs["prompt"]
    assert "'+ because'" in obs["prompt"] and "[action] +" in info["error"]
    assert obs["text"] == "Target: 3. Current: 1."
    obs, *_ = env.step("+")
    assert "no `[action]` tag" in obs["prompt"]
    obs, reward, *_ = env.step("[action] +")
    assert reward == 0.0 and "invalid" not in obs["prompt"]


def test_wrapper_three_invalid_terminates_with_timeout_reward():
    env = wrapper_at(target=3, current=1)
    rewards = []
    for _ in range(3):
        _, reward, terminated, truncated, info = env.step("nonsense")
        rewards.append(reward)
    assert rewards == [-2.0, -2.0, -10.0]
    assert terminated and not truncated and not info["success"]
    with pytest.raises(RuntimeError):
        env.step("[action] +")


def test_wrapper_invalid_counter_resets_after_valid_reply():
    env = wrapper_at(target=5, current=0)
    replies = ["x", "x", "[action] +", "x", "x"]
    for reply in replies:
        _, reward, terminated, _, _ = env.step(reply)
        assert not terminated
    assert reward == -2.0


def test_wrapper_total_step_limit_truncates():
    env = wrapper_at(target=5, current=0, config=TextActionConfig(max_steps=10))
    replies = ["x", "x", "[action] -"] * 3 + ["x"]
    for step, reply in enumerate(replies, start=1):
        _, reward, terminated, truncated, info = env.step(reply)
        assert not terminated
        assert truncated == (step == 10)
    assert reward == -2.0  # the step limit adds no timeout reward
    assert info["state"]["steps"] == 3  # only the valid replies advanced the inner env
    with pytest.raises(RuntimeError):
        env.step("[action] +")


def test_random_reply_always_valid():
    env = make_env("NumberLine", seed=0)
    rng = np.random.default_rng(0)
    parsed = [parse_action(env.random_reply(rng), env.valid_actions) for _ in range(200)]
    assert set(parsed) == {0, 1}
    assert env.valid_actions == ACTIONS


def test_make_env_seed_reproducible():
    first = [make_env("NumberLine", seed=5).reset()[1]["state"] for _ in range(2)]
    assert first[0] == first[1]


def test_make_env_unknown_name():
    with pytest.raises(ValueError, match="unknown task 'Blackjak'.*NumberLine"):
        make_env("Blackjak")


def test_every_task_registered_and_buildable():
    expected = {"NumberLine", "Blackjack", "EZPoints", "Points24"} | {
        f"BabyAI-{level}" for level in ("GoToRedBall", "GoToObj", "GoToLocal", "PickupLoc", "PutNextLocal", "GoTo")
    }
    web = {f"MiniWoB-{task}" for task in MINIWOB_TASKS}
    assert len(web) == 27 and expected | web == set(CATALOG)
    for name in web:  # built with a browser in tests/test_miniwob.py; here their specs and registration
        spec = get_task(name)
        assert spec.env_id in gymnasium.registry and spec.random_action is not None and spec.text_config.max_steps == 25
    for name in expected:
        spec = get_task(name)
        assert spec.name == name and spec.env_id == f"vlmq/{name}-v0" and spec.env_id in gymnasium.registry
        env = make_env(spec.name, seed=0)
        assert env.action_space.n == len(spec.prompt.actions) == len(env.valid_actions)
        obs, _ = env.reset()
        assert set(obs) == {"text", "image", "prompt"} and obs["text"] in obs["prompt"]
        assert spec.oracle is not None, f"{spec.name} has no oracle"


def test_an_image_only_prompt_keeps_what_the_picture_cannot_show():
    obs, _ = make_env("BabyAI-GoToLocal", show_text=False).reset(seed=1)
    mission = obs["text"].splitlines()[0]
    assert obs["prompt"].endswith(f"Observation: {mission}\nThe rest is shown in the image.")
    assert "You see" not in obs["prompt"]
    obs, _ = make_env("NumberLine", show_text=False).reset(seed=1)
    assert obs["prompt"].endswith("Observation: shown in the image.") and "Target" not in obs["prompt"]
