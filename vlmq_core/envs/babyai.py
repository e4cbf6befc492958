"""BabyAI (minigrid) levels behind vlmq's text-action wrapper, with minigrid's BabyAI bot as the oracle.

Raw envs ``vlmq/BabyAI-<Level>-v0`` (short names ``BabyAI-<Level>`` for `make_env`) wrap minigrid's
``BabyAI-<Level>-v0``:

- actions: Discrete(6) = minigrid's ids 0..5, :data:`BABYAI_ACTIONS` (minigrid's ``done`` is dropped);
- observation: the rgb render, the whole grid (``view="full"``, the agent's field of view highlighted) or the
  agent's point of view (``view="pov"``); text: BabyAI-Text sentences (:mod:`vlmq_core.envs.babyai_text`);
- reward: minigrid's, ``1 - 0.9 * steps / max_steps`` on success and 0 otherwise, where ``max_steps`` is the
  level's own limit (64 for the one-room GoTo/Pickup levels, 128 for PutNextLocal, 576 for GoTo); the level
  truncates there, the text wrapper (Table 4) truncates at 64 turns;
- ``reset(seed=s)`` reproduces the episode exactly (minigrid's generator is seeded with `s`).

Replies are parsed by :func:`parse_babyai_action`: the first action named after the ``[action]`` tag.
The oracle is minigrid's BabyAI bot, one per episode, shown every action taken (:meth:`BabyAIEnv.bot_decision`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import gymnasium
import minigrid  # noqa: F401  (registers minigrid's BabyAI-* envs with gymnasium)
import numpy as np
from gymnasium import spaces
from minigrid.core.world_object import WorldObj
from minigrid.envs.babyai.core.roomgrid_level import RoomGridLevel
from minigrid.envs.babyai.core.verifier import ObjDesc
from minigrid.utils.baby_ai_bot import (
    BabyAIBot,
    CloseSubgoal,
    DisappearedBoxError,
    DropSubgoal,
    ExploreSubgoal,
    GoNextToSubgoal,
    OpenSubgoal,
    PickupSubgoal,
)

from vlmq_core.envs import BABYAI_LEVELS
from vlmq_core.envs.babyai_text import view_text
from vlmq_core.envs.spec import OracleAction, TaskSpec
from vlmq_core.envs.text_action import ACTION_TAG, TaskPrompt, TextActionConfig, after_tag, shorten

BABYAI_ACTIONS = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
"""BabyAI's actions in minigrid's order (ids 0..5; minigrid's ``done`` is not offered)."""

_BABYAI_GOALS = {
    "GoToRedBall": "Go to the red ball in your room; the other objects only distract.",
    "GoToObj": "Go to the only object in your room.",
    "GoToLocal": "Go to the object named in the mission, in your room, among other objects.",
    "PickupLoc": "Pick up the object named in the mission, in your room, among other objects.",
    "PutNextLocal": "Pick up the first object named in the mission and put it down next to the second one.",
    "GoTo": "Go to the object named in the mission; it may be in another of the 9 rooms, behind a door.",
}


def _babyai_prompt(goal: str) -> TaskPrompt:
    """A BabyAI level's prompt: the shared grid-world rules and actions plus the level's goal."""
    return TaskPrompt(
        description=f"You are an agent in a BabyAI grid world. {goal} Going to an object means facing it "
        "from the next cell. Each observation gives the mission and what you see, in steps from your cell.",
        actions=list(BABYAI_ACTIONS),
        action_doc="turn left : turn 90 degrees left\nturn right : turn 90 degrees right\n"
        "go forward : move one cell forward\npick up : pick up the object in front of you\n"
        "drop : put the object you carry in front of you\ntoggle : open or close the door in front of you",
        example=f"{ACTION_TAG} go forward",
    )


BABYAI_PROMPTS: dict[str, TaskPrompt] = {level: _babyai_prompt(_BABYAI_GOALS[level]) for level in BABYAI_LEVELS}
"""BabyAI prompts keyed by level name (``GoToRedBall``, ...)."""

BABYAI_TEXT_CONFIG = TextActionConfig(
    invalid_reward=-1.0, max_consecutive_invalid=5, timeout_reward=-200.0, max_steps=64
)
"""BabyAI's reward-wrapper settings (METHOD.md Table 4)."""

VIEWS = ("full", "pov")
"""Image modes: the whole grid, or the agent's 7x7 point of view (the agent at the bottom centre, facing up)."""
MAX_TILE = 32
"""Largest tile size in pixels (minigrid's default) when `tile_size` is left to the env."""
MAX_IMAGE = 384
"""With `tile_size` left to the env, tiles shrink so that the image side stays at most this many pixels."""

_REJECTED = "Sampling rejected"
"""Start of the line minigrid prints for every rejected level sample (silenced by :func:`_quiet_sampling`)."""


@contextlib.contextmanager
def _quiet_sampling() -> Iterator[None]:
    """Drop minigrid's "Sampling rejected: ..." stdout lines; every other line still reaches stdout."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        kept = [line for line in buffer.getvalue().splitlines(keepends=True) if not line.startswith(_REJECTED)]
        sys.stdout.write("".join(kept))


class BabyAIEnv(gymnasium.Env):
    """One BabyAI level with vlmq's 6 actions and an rgb image observation (see the module docstring).

    `info` (also on reset) is the state ``{"mission", "agent_pos": (x, y), "agent_dir": 0..3 (east, south,
    west, north), "carrying": "blue key" or None, "steps", "max_steps"}`` with plain Python values.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        level: str = "GoToRedBall",
        view: str = "full",
        tile_size: int | None = None,
        highlight: bool = True,
        render_mode: str | None = "rgb_array",
    ):
        """Build minigrid's ``BabyAI-<level>-v0``.

        `view`: ``"full"`` or ``"pov"``. `tile_size`: pixels per grid cell; None picks the largest size up to
        :data:`MAX_TILE` that keeps the image side within :data:`MAX_IMAGE` (8x8 rooms: 256 px, the 22x22
        GoTo maze: 374 px, the 7x7 point of view: 224 px). `highlight` lightens the agent's field of view in
        the full view. `render_mode` may only be "rgb_array" (or None, same behaviour).
        """
        minigrid_id = f"BabyAI-{level}-v0"
        if minigrid_id not in gymnasium.registry:
            raise ValueError(f"unknown BabyAI level {level!r}: minigrid registers no {minigrid_id}")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if tile_size is not None and tile_size < 1:
            raise ValueError(f"tile_size must be a positive number of pixels, got {tile_size}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.level = level
        self.view = view
        self.highlight = highlight
        self.render_mode = render_mode
        self.minigrid: RoomGridLevel = gymnasium.make(minigrid_id).unwrapped
        cells = self.minigrid.agent_view_size if view == "pov" else max(self.minigrid.width, self.minigrid.height)
        self.tile_size = tile_size if tile_size is not None else min(MAX_TILE, MAX_IMAGE // cells)
        rows = self.minigrid.agent_view_size if view == "pov" else self.minigrid.height
        cols = self.minigrid.agent_view_size if view == "pov" else self.minigrid.width
        self.action_space = spaces.Discrete(len(BABYAI_ACTIONS))
        self.observation_space = spaces.Box(0, 255, (rows * self.tile_size, cols * self.tile_size, 3), dtype=np.uint8)
        self._bot: BabyAIBot | None = None
        """The episode's bot (built on reset); `_bot_ok` is False once it failed, `_bot_action` its suggestion."""
        self._bot_ok = False
        self._bot_action: int | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Generate a new episode (the same one for the same `seed`); minigrid's rejection prints are silenced."""
        super().reset(seed=seed)
        with _quiet_sampling():
            self.minigrid.reset(seed=seed, options=options)
        self._bot, self._bot_ok = BabyAIBot(self.minigrid), True
        self._advise(None)
        return self.render(), self.state()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Take one of the 6 actions (0 turn left ... 5 toggle); minigrid's reward, termination and truncation."""
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}; expected 0..5 ({', '.join(BABYAI_ACTIONS)})")
        _, reward, terminated, truncated, _ = self.minigrid.step(int(action))
        self._advise(int(action))
        return self.render(), float(reward), bool(terminated), bool(truncated), self.state()

    def state(self) -> dict[str, Any]:
        """The current state as a fresh dict of plain Python values (see the class docstring)."""
        env = self.minigrid
        carrying = env.carrying
        return {
            "mission": env.mission,
            "agent_pos": (int(env.agent_pos[0]), int(env.agent_pos[1])),
            "agent_dir": int(env.agent_dir),
            "carrying": None if carrying is None else f"{carrying.color} {carrying.type}",
            "steps": int(env.step_count),
            "max_steps": int(env.max_steps),
        }

    def text(self) -> str:
        """The mission and the BabyAI-Text description of the agent's view, one sentence per line."""
        return view_text(self.minigrid)

    def render(self) -> np.ndarray:
        """The current (H, W, 3) uint8 frame of the configured view."""
        return self.minigrid.get_frame(
            highlight=self.highlight, tile_size=self.tile_size, agent_pov=self.view == "pov"
        ).astype(np.uint8, copy=False)

    def bot_decision(self) -> OracleAction:
        """minigrid's BabyAI bot's action for the current state, with its current subgoal as the thought.

        The bot of the episode watches every action taken (see :meth:`_advise`), so it follows the actual
        state whoever acts. When it broke earlier in the episode (e.g. `DisappearedBoxError` after a box was
        toggled open) or it suggests ``done`` (it thinks the mission is complete while the level goes on),
        a fresh bot is built for the current state (it explores anew: handing it the cells seen so far can
        leave it a seen target with no known path, which it asserts against). If the fresh bot fails
        too, the decision is ``turn left`` (look around); if it also says ``done``, the decision is an action
        that leaves the state unchanged (``drop`` when that is a no-op, else ``toggle`` facing an empty cell),
        which completes a GoTo mission whose target the agent already faces.
        Known limit: a box toggled open vanishes with its contents (minigrid's rule) while the mission keeps
        its old position, so the bot may never finish such an episode (the wrapper then truncates it).
        """
        if self._bot is None:
            raise RuntimeError("no episode yet: call reset() first")
        done = self.minigrid.actions.done
        if self._bot_action is None or self._bot_action == done:
            self._bot, self._bot_ok = BabyAIBot(self.minigrid), True
            self._advise(None)
        if self._bot_action is None:
            return OracleAction(0, "I cannot plan a way to finish the mission from here, so I look around.")
        if self._bot_action == done:
            front_empty = self.minigrid.grid.get(*self.minigrid.front_pos) is None
            stay = 5 if front_empty and self.minigrid.carrying is not None else 4  # toggle / drop: no-ops here
            return OracleAction(stay, "The mission looks complete, so I stay where I am.")
        return OracleAction(self._bot_action, _subgoal_text(self._bot))

    def _advise(self, action_taken: int | None) -> None:
        """Show the bot the action just taken (None: a new bot's first look) and keep its next suggestion.

        This is the bot's advisor mode: it replans from the actual state, including undoing harmful
        deviations (e.g. dropping an object picked up by mistake). Once the bot fails (raises), it stops
        advising (suggestion None) until :meth:`bot_decision` builds a fresh one. About 0.3 ms per step.
        """
        self._bot_action = None
        if not self._bot_ok:
            return
        try:
            self._bot_action = int(self._bot.replan(action_taken))
        except (AssertionError, DisappearedBoxError):
            self._bot_ok = False


def _target_name(datum: Any, grid) -> str | None:
    """``"the red ball"`` for an object description, object or occupied cell; None for an empty cell."""
    if isinstance(datum, ObjDesc):
        return f"the {' '.join(word for word in (datum.color, datum.type or 'object') if word)}"
    obj = datum if isinstance(datum, WorldObj) else grid.get(*datum)
    return None if obj is None else f"the {obj.color} {obj.type}"


def _subgoal_text(bot: BabyAIBot) -> str:
    """A short first-person reason for the bot's current action: its top subgoal in words."""
    subgoal = bot.stack[-1] if bot.stack else None
    if isinstance(subgoal, GoNextToSubgoal):
        target = _target_name(subgoal.datum, bot.mission.unwrapped.grid)
        if subgoal.reason == "Explore":
            return "I explore to find what the mission needs."
        if subgoal.reason == "PutNext":
            return f"I go to a free cell next to {target} to put down what I carry."
        return f"I go to {target}." if target else "I go to a free cell."
    texts = {
        ExploreSubgoal: "I explore to find what the mission needs.",
        PickupSubgoal: "I pick up the object in front of me.",
        DropSubgoal: "I drop what I carry in front of me.",
        OpenSubgoal: "I open the door in front of me.",
        CloseSubgoal: "I close the door in front of me.",
    }
    return texts.get(type(subgoal), "I follow the mission.")


# ---------------------------------------------------------------- replies


@functools.lru_cache(maxsize=16)
def _action_pattern(actions: tuple[str, ...]) -> re.Pattern[str]:
    """Matches any of `actions` as whole words, case-insensitive, any whitespace between their words."""
    names = sorted(actions, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(map(re.escape, name.split())) for name in names)
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def parse_babyai_action(reply: str, actions: Sequence[str]) -> int | None:
    """Index in `actions` of the first action named after the first ``[action]`` tag; None if there is none.

    Case-insensitive, whole words, any whitespace between an action's words; the earliest occurrence in the
    text wins. "[action] I will go forward then turn left" -> "go forward"; "**[Action]:** `Turn Left`" ->
    "turn left"; "[action] forward" -> None (not an action name); "go forward" without the tag -> None.
    """
    rest = after_tag(reply)
    if rest is None:
        return None
    match = _action_pattern(tuple(actions)).search(rest)
    if match is None:
        return None
    said = " ".join(match.group(0).lower().split())
    return [name.lower() for name in actions].index(said)


def babyai_invalid_reason(reply: str, actions: Sequence[str]) -> str:
    """Why `reply` names no action after the ``[action]`` tag (for the next prompt's error line)."""
    rest = after_tag(reply)
    if rest is None:
        return f"no `{ACTION_TAG}` tag found."
    text = rest.strip()
    if not text:
        return f"no action after `{ACTION_TAG}`."
    return f"{shorten(text)!r} names none of: {', '.join(actions)}."


# ---------------------------------------------------------------- registration


def babyai_oracle(env: gymnasium.Env) -> OracleAction:
    """minigrid's BabyAI bot, kept in sync with the episode (see :meth:`BabyAIEnv.bot_decision`)."""
    inner = env.unwrapped
    if not isinstance(inner, BabyAIEnv):
        raise TypeError(f"expected a BabyAIEnv, got {type(inner).__name__}")
    return inner.bot_decision()


def mission_line(summary: str) -> str:
    """The ``Mission: ...`` line of a BabyAI summary: what an image-only prompt still says in words."""
    return next((line for line in summary.splitlines() if line.startswith("Mission:")), "")


TASKS = {
    f"BabyAI-{level}": TaskSpec(
        name=f"BabyAI-{level}",
        prompt=BABYAI_PROMPTS[level],
        text_config=dataclasses.replace(BABYAI_TEXT_CONFIG),
        parser=parse_babyai_action,
        invalid_reason=babyai_invalid_reason,
        unseen=mission_line,
        oracle=babyai_oracle,
    )
    for level in BABYAI_LEVELS
}
"""This module's tasks, one per level (see :data:`vlmq_core.envs.CATALOG`)."""
