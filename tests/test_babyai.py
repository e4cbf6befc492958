"""BabyAI levels: registration, seeding, view text, reply parser, Table 4 penalties, images and the bot oracle."""

from __future__ import annotations

import contextlib
import io

import gymnasium
import numpy as np
import pytest
from minigrid.core.actions import Actions
from minigrid.core.grid import Grid
from minigrid.core.world_object import Ball, Box, Door, Key

from vlmq_core.envs import BABYAI_LEVELS, CATALOG, get_task, make_env
from vlmq_core.envs.babyai import (
    BABYAI_ACTIONS,
    BabyAIEnv,
    _quiet_sampling,
    babyai_invalid_reason,
    parse_babyai_action,
)
from vlmq_core.envs.babyai_text import describe_view
from vlmq_core.envs.oracles import OracleConfig, oracle_reply
from vlmq_core.envs.text_action import TextActionConfig

TURN_LEFT, TURN_RIGHT, FORWARD, PICKUP, DROP, TOGGLE = range(6)


# ---------------------------------------------------------------- registration


@pytest.mark.parametrize("level", ["GoToRedBall", "GoToObj", "GoToLocal", "PickupLoc", "PutNextLocal", "GoTo"])
def test_every_level_is_registered_with_six_actions_and_babyai_settings(level):
    env_id = f"vlmq/BabyAI-{level}-v0"
    assert level in BABYAI_LEVELS and env_id in gymnasium.registry and f"BabyAI-{level}" in CATALOG
    spec = get_task(f"BabyAI-{level}")
    assert spec.env_id == env_id and spec.oracle is not None and get_task(env_id) is spec
    assert spec.text_config == TextActionConfig(
        invalid_reward=-1, max_consecutive_invalid=5, timeout_reward=-200, max_steps=64
    )
    assert spec.parser is parse_babyai_action and spec.invalid_reason is babyai_invalid_reason
    assert spec.prompt.actions == ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
    env = gymnasium.make(env_id)
    assert env.action_space == gymnasium.spaces.Discrete(6)
    assert env.unwrapped.minigrid.spec.id == f"BabyAI-{level}-v0"


def test_action_ids_are_minigrids():
    assert [a.name for a in Actions][:6] == ["left", "right", "forward", "pickup", "drop", "toggle"]
    assert len(BABYAI_ACTIONS) == 6


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown BabyAI level"):
        BabyAIEnv("GoToNowhere")
    with pytest.raises(ValueError, match="view must be one of"):
        BabyAIEnv("GoToObj", view="top")
    with pytest.raises(ValueError, match="tile_size"):
        BabyAIEnv("GoToObj", tile_size=0)
    env = BabyAIEnv("GoToObj")
    with pytest.raises(RuntimeError, match="reset"):
        env.bot_decision()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="invalid action 6"):
        env.step(6)


# ---------------------------------------------------------------- seeding, state, images


def _rollout(env: BabyAIEnv, seed: int, actions: list[int]) -> list[tuple[bytes, str, dict]]:
    frame, state = env.reset(seed=seed)
    out = [(frame.tobytes(), env.text(), state)]
    for action in actions:
        frame, _, _, _, state = env.step(action)
        out.append((frame.tobytes(), env.text(), state))
    return out


@pytest.mark.parametrize("level", ["GoToLocal", "PickupLoc", "GoTo"])
def test_reset_with_a_seed_reproduces_the_episode(level):
    env = BabyAIEnv(level)
    actions = [FORWARD, TURN_LEFT, FORWARD, PICKUP, TURN_RIGHT, FORWARD]
    first = _rollout(env, 7, actions)
    _rollout(env, 8, actions)  # another episode in between
    assert _rollout(env, 7, actions) == first
    assert _rollout(BabyAIEnv(level), 7, actions) == first
    assert _rollout(env, 8, [])[0] != first[0]


def test_make_env_seed_fixes_the_sequence_of_episodes():
    def missions() -> list[str]:
        env = make_env("BabyAI-GoToLocal", seed=3)
        return [env.reset()[1]["state"]["mission"] + env.unwrapped.text() for _ in range(4)]

    assert missions() == missions()


def test_state_info_holds_plain_values():
    env = BabyAIEnv("PickupLoc")
    _, state = env.reset(seed=0)
    assert set(state) == {"mission", "agent_pos", "agent_dir", "carrying", "steps", "max_steps"}
    assert state["mission"] == env.minigrid.mission and state["carrying"] is None and state["steps"] == 0
    assert state["agent_pos"] == tuple(int(v) for v in env.minigrid.agent_pos) and state["max_steps"] == 64
    env.minigrid.carrying = Key("blue")
    assert env.state()["carrying"] == "blue key"


@pytest.mark.parametrize(
    ("level", "kwargs", "side"),
    [
        ("GoToRedBall", {}, 256),  # 8x8 cells of 32 px
        ("GoTo", {}, 374),  # 22x22 cells of 17 px (kept within 384 px)
        ("GoToRedBall", {"view": "pov"}, 224),  # 7x7 cells of 32 px
        ("GoTo", {"view": "pov"}, 224),
        ("GoToRedBall", {"tile_size": 8}, 64),
        ("GoToRedBall", {"view": "pov", "tile_size": 10}, 70),
    ],
)
def test_image_shapes_for_both_views(level, kwargs, side):
    env = BabyAIEnv(level, **kwargs)
    frame, _ = env.reset(seed=1)
    assert frame.shape == (side, side, 3) == env.observation_space.shape and frame.dtype == np.uint8
    assert env.step(FORWARD)[0].shape == (side, side, 3)


def test_full_view_highlights_the_field_of_view_and_pov_shows_only_it():
    env = BabyAIEnv("GoToRedBall")
    frame, _ = env.reset(seed=1)
    plain = env.minigrid.get_frame(highlight=False, tile_size=32)
    assert np.array_equal(frame, env.minigrid.get_frame(highlight=True, tile_size=32)) and not np.array_equal(
        frame, plain
    )
    pov = BabyAIEnv("GoToRedBall", view="pov")
    assert np.array_equal(pov.reset(seed=1)[0], env.minigrid.get_frame(tile_size=32, agent_pov=True))


def test_text_wrapper_image_is_the_render():
    env = make_env("BabyAI-GoToObj")
    obs, _ = env.reset(seed=2)
    assert obs["image"].size == (256, 256) and np.array_equal(np.asarray(obs["image"]), env.unwrapped.render())


# ---------------------------------------------------------------- view text


def _room(env: BabyAIEnv, agent_pos, agent_dir, carrying=None) -> Grid:
    """Replace the level's grid with an empty walled 8x8 room and place the agent."""
    grid = Grid(8, 8)
    grid.wall_rect(0, 0, 8, 8)
    env.minigrid.grid = grid
    env.minigrid.agent_pos, env.minigrid.agent_dir, env.minigrid.carrying = agent_pos, agent_dir, carrying
    return grid


def test_view_text_walls_objects_doors_and_carrying():
    env = BabyAIEnv("GoToObj")
    env.reset(seed=0)
    # agent at (3, 6) facing north (up); x grows to the right, y downwards
    grid = _room(env, (3, 6), 3, carrying=Box("green"))
    grid.set(2, 4, Ball("red"))
    grid.set(5, 6, Key("blue"))  # same row, right: blocks the view of the right wall
    grid.set(5, 0, Door("yellow", is_locked=True))
    grid.set(0, 3, Door("purple", is_open=True))
    assert describe_view(env.minigrid) == [
        "You carry a green box",
        "You see a wall 6 steps forward",
        "You see a wall 3 steps left",
        "You see an open purple door 3 steps left and 3 steps forward",
        "You see a red ball 1 step left and 2 steps forward",
        "You see a locked yellow door 2 steps right and 6 steps forward",
        "You see a blue key 2 steps right",
    ]
    assert env.text().split("\n") == [f"Mission: {env.minigrid.mission}", *describe_view(env.minigrid)]


def test_view_text_hides_what_walls_and_doors_occlude():
    env = BabyAIEnv("GoToObj")
    env.reset(seed=0)
    # agent at (1, 1) facing east: left is north, right is south
    grid = _room(env, (1, 1), 0)
    grid.vert_wall(4, 1, 6)
    grid.set(4, 3, Door("green"))
    grid.set(5, 3, Key("purple"))  # behind the closed door: hidden
    grid.set(2, 2, Ball("grey"))
    assert describe_view(env.minigrid) == [
        "You see a wall 3 steps forward",
        "You see a wall 1 step left",  # the right wall is beyond the 7x7 view's half-width
        "You see a grey ball 1 step right and 1 step forward",
        "You see a closed green door 2 steps right and 3 steps forward",
    ]
    grid.get(4, 3).is_open = True
    assert "You see a purple key 3 steps right and 4 steps forward" not in describe_view(env.minigrid)
    assert "You see an open green door 2 steps right and 3 steps forward" in describe_view(env.minigrid)


def test_wall_straight_ahead_is_described_only_when_nothing_stands_between():
    env = BabyAIEnv("GoToObj")
    env.reset(seed=0)
    grid = _room(env, (1, 3), 0)  # facing east: the north wall is 3 steps left, the south one out of view
    assert describe_view(env.minigrid) == ["You see a wall 6 steps forward", "You see a wall 3 steps left"]
    grid.set(4, 3, Ball("blue"))
    assert describe_view(env.minigrid) == ["You see a wall 3 steps left", "You see a blue ball 3 steps forward"]


# ---------------------------------------------------------------- replies


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("[action] go forward", FORWARD),
        ("**[Action]:** `Turn Left`", TURN_LEFT),
        ("[action] I will go forward then turn left", FORWARD),
        ("[ACTION] TURN RIGHT, then pick up the key.", TURN_RIGHT),
        ("I should turn left.\n[action] toggle the door", TOGGLE),
        ("[action]\n- pick  up\n- drop", PICKUP),
        ("[action] turn\nright", TURN_RIGHT),
        ("[action] drop.", DROP),
        ("[action] dropping it", None),
        ("[action] pickup", None),
        ("[action] forward", None),
        ("go forward", None),
        ("[action]", None),
    ],
)
def test_parser_takes_the_first_action_named_after_the_tag(reply, expected):
    assert parse_babyai_action(reply, BABYAI_ACTIONS) == expected


def test_invalid_reason_names_the_problem():
    assert babyai_invalid_reason("go forward", BABYAI_ACTIONS) == "no `[action]` tag found."
    assert babyai_invalid_reason("[action]  ", BABYAI_ACTIONS) == "no action after `[action]`."
    assert babyai_invalid_reason("[action] fly", BABYAI_ACTIONS) == (
        "'fly' names none of: turn left, turn right, go forward, pick up, drop, toggle."
    )


# ---------------------------------------------------------------- Table 4 wrapper


def test_invalid_reply_costs_one_and_leaves_the_level_unchanged():
    env = make_env("BabyAI-GoToLocal")
    obs, _ = env.reset(seed=0)
    obs2, reward, terminated, truncated, info = env.step("I go forward")
    assert (reward, terminated, truncated, info["valid"]) == (-1.0, False, False, False)
    assert obs2["text"] == obs["text"] and info["state"]["steps"] == 0
    assert "no `[action]` tag found. Expected e.g. `[action] go forward`." in obs2["prompt"]


def test_five_invalid_replies_in_a_row_end_the_episode_with_minus_200():
    env = make_env("BabyAI-GoToLocal")
    env.reset(seed=0)
    rewards = [env.step("[action] jump")[1] for _ in range(4)]
    _, reward, terminated, truncated, _ = env.step("[action] jump")
    assert rewards == [-1.0] * 4 and (reward, terminated, truncated) == (-200.0, True, False)


def test_episode_is_truncated_after_64_turns_valid_or_not():
    env = make_env("BabyAI-PutNextLocal")  # the level itself allows 128 steps
    env.reset(seed=0)
    for t in range(1, 65):
        reply = "[action] turn left" if t % 4 == 0 else "nothing"
        _, reward, terminated, truncated, _ = env.step(reply)
        assert not terminated and truncated == (t == 64)
    assert reward == 0.0


# ---------------------------------------------------------------- sampling prints


def test_reset_prints_no_sampling_rejections(capsys):
    raw = gymnasium.make("BabyAI-PickupLoc-v0").unwrapped
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        raw.reset(seed=4)
    assert "Sampling rejected" in buffer.getvalue()  # minigrid itself does print for this seed
    env = make_env("BabyAI-PickupLoc")
    for seed in (4, 15, 16, 17):
        env.reset(seed=seed)
    BabyAIEnv("GoTo").reset(seed=1)
    assert capsys.readouterr().out == ""


def test_quiet_sampling_keeps_other_output(capsys):
    with _quiet_sampling():
        print("Sampling rejected: no path")
        print("Timeout during mission generation: boom")
    assert capsys.readouterr().out == "Timeout during mission generation: boom\n"
    with pytest.raises(KeyError), _quiet_sampling():
        raise KeyError("real errors propagate")


# ---------------------------------------------------------------- bot oracle


def _play(name: str, seeds, random_first: int = 0, cfg: OracleConfig | None = None) -> list[dict]:
    """Episodes of the oracle through the text wrapper; the first `random_first` turns are random actions
    without toggle (a toggled box vanishes with its contents, which can make a mission impossible)."""
    env = make_env(name)
    rng = np.random.default_rng(0)
    infos = []
    for seed in seeds:
        env.reset(seed=seed)
        for t in range(64):
            if t < random_first:
                reply = f"[action] {BABYAI_ACTIONS[int(rng.integers(TOGGLE))]}"
            else:
                reply = oracle_reply(env, rng, cfg)
            _, reward, terminated, truncated, info = env.step(reply)
            if terminated or truncated:
                break
        infos.append({**info, "reward": reward})
    return infos


@pytest.mark.parametrize("level", ["GoToRedBall", "GoToLocal", "PickupLoc"])
def test_bot_oracle_solves_every_episode(level):
    infos = _play(f"BabyAI-{level}", range(20))
    assert all(info["success"] for info in infos)
    for info in infos:  # minigrid's reward: 1 - 0.9 * steps / max_steps
        assert info["reward"] == pytest.approx(1 - 0.9 * info["state"]["steps"] / info["state"]["max_steps"])


@pytest.mark.parametrize("level", ["GoToRedBall", "GoToLocal", "PickupLoc"])
def test_bot_oracle_recovers_after_random_actions(level):
    assert all(info["success"] for info in _play(f"BabyAI-{level}", range(20), random_first=5))


def test_bot_oracle_solves_put_next_with_corrupted_turns_and_gives_thoughts():
    cfg = OracleConfig(corrupt_rate=0.2, thought=True)
    assert all(info["success"] for info in _play("BabyAI-PutNextLocal", range(10), cfg=cfg))
    env = make_env("BabyAI-GoToRedBall")
    env.reset(seed=0)
    reply = oracle_reply(env, np.random.default_rng(0), OracleConfig(thought=True))
    assert reply.startswith("Thought: I go to the red ball.\n[action] ")


def test_asking_the_bot_again_in_the_same_state_does_not_change_its_plan():
    def actions(asks: int) -> list[int]:
        env = BabyAIEnv("PutNextLocal")
        env.reset(seed=5)
        taken = []
        for _ in range(40):
            decisions = {env.bot_decision() for _ in range(asks)}
            assert len(decisions) == 1
            taken.append(decisions.pop().action)
            if env.step(taken[-1])[2]:
                return taken
        raise AssertionError("the bot did not finish PutNextLocal in 40 steps")

    assert actions(3) == actions(1)


def test_bot_done_becomes_an_action_that_keeps_the_state():
    env = BabyAIEnv("GoToRedBall")
    env.reset(seed=0)
    ball = next(obj for obj in env.minigrid.grid.grid if obj is not None and (obj.color, obj.type) == ("red", "ball"))
    x, y = ball.cur_pos
    env.minigrid.agent_pos, env.minigrid.agent_dir = (x - 1, y), 0  # teleport: face the ball from its left
    if env.minigrid.grid.get(x - 1, y) is not None:
        env.minigrid.agent_pos, env.minigrid.agent_dir = (x + 1, y), 2
    env._advise(None)  # let the bot look again: it finds the mission complete and says done
    decision = env.bot_decision()
    assert decision.action == DROP and "complete" in decision.thought
    _, reward, terminated, _, _ = env.step(decision.action)
    assert terminated and reward > 0
