"""NumberLine (RL4VLM gym_cards): move the current number to the target on a drawn number line.

The observation is a 300x300 RGB picture of the number line with the target and the current position
marked and written out; `text()` gives the same state as one line of text.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw, ImageFont

from vlmq_core.envs.spec import OracleAction, TaskSpec
from vlmq_core.envs.text_action import ACTION_TAG, TaskPrompt

IMAGE_SIZE = 300
"""Width and height of the rendered observation in pixels."""

_MARGIN = 30
"""Horizontal distance from the image border to the first and last tick."""
_AXIS_Y = 200
"""Vertical position of the number line axis."""
_BACKGROUND = (255, 255, 255)
_AXIS_COLOUR = (0, 0, 0)
_TARGET_COLOUR = (214, 39, 40)
_CURRENT_COLOUR = (31, 119, 180)


class NumberLineEnv(gymnasium.Env):
    """Positions 0..max_position; action 0 (`-`) moves left, 1 (`+`) moves right, both clamped.

    Reward: +1 and terminated when current == target; -1 when the distance to the target does not
    shrink (moving away, or pushing against a border); 0 otherwise. Truncated after `max_steps` steps.
    `info` (also on reset) is the state ``{"target", "current", "steps"}`` with plain Python ints.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, max_position: int = 5, max_steps: int = 10, render_mode: str | None = "rgb_array"):
        """Build the env; `render_mode` may only be "rgb_array" (or None, same behaviour)."""
        if max_position < 1:
            raise ValueError(f"max_position must be >= 1, got {max_position}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.max_position = max_position
        self.max_steps = max_steps
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        self.target = 0
        self.current = 0
        self.steps = 0
        self._background: Image.Image | None = None
        self._frames: dict[tuple[int, int], np.ndarray] = {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, int]]:
        """Draw target and current uniformly from 0..max_position with current != target."""
        super().reset(seed=seed)
        self.target = int(self.np_random.integers(0, self.max_position + 1))
        offset = int(self.np_random.integers(1, self.max_position + 1))
        self.current = (self.target + offset) % (self.max_position + 1)
        self.steps = 0
        return self.render(), self.state()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, int]]:
        """Move by one (0 = left, 1 = right) and score the move."""
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}; expected 0 (-) or 1 (+)")
        before = abs(self.current - self.target)
        move = 1 if int(action) == 1 else -1
        self.current = min(max(self.current + move, 0), self.max_position)
        self.steps += 1
        after = abs(self.current - self.target)
        terminated = after == 0
        if terminated:
            reward = 1.0
        elif after >= before:
            reward = -1.0
        else:
            reward = 0.0
        truncated = not terminated and self.steps >= self.max_steps
        return self.render(), reward, terminated, truncated, self.state()

    def state(self) -> dict[str, int]:
        """The current state as a fresh dict ``{"target", "current", "steps"}``."""
        return {"target": self.target, "current": self.current, "steps": self.steps}

    def text(self) -> str:
        """The state as text, e.g. ``"Target: 3. Current: 1."``."""
        return f"Target: {self.target}. Current: {self.current}."

    def render(self) -> np.ndarray:
        """The current picture as a (300, 300, 3) uint8 array (a fresh copy each call)."""
        key = (self.target, self.current)
        frame = self._frames.get(key)
        if frame is None:
            frame = np.asarray(self._draw(), dtype=np.uint8)
            self._frames[key] = frame
        return frame.copy()

    def _tick_x(self, position: int) -> int:
        """Horizontal pixel of the tick for `position`."""
        return round(_MARGIN + position * (IMAGE_SIZE - 2 * _MARGIN) / self.max_position)

    def _static(self) -> Image.Image:
        """The state-independent background (axis, ticks, labels), drawn once."""
        if self._background is None:
            image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), _BACKGROUND)
            draw = ImageDraw.Draw(image)
            font = ImageFont.load_default(size=22)
            draw.line([(_MARGIN - 12, _AXIS_Y), (IMAGE_SIZE - _MARGIN + 12, _AXIS_Y)], fill=_AXIS_COLOUR, width=3)
            for position in range(self.max_position + 1):
                x = self._tick_x(position)
                draw.line([(x, _AXIS_Y - 9), (x, _AXIS_Y + 9)], fill=_AXIS_COLOUR, width=3)
                draw.text((x, _AXIS_Y + 16), str(position), fill=_AXIS_COLOUR, font=font, anchor="mt")
            self._background = image
        return self._background

    def _draw(self) -> Image.Image:
        """Draw the state on a copy of the background: a red flag at the target, a blue dot at current."""
        image = self._static().copy()
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=30)
        draw.text((20, 18), f"Target: {self.target}", fill=_TARGET_COLOUR, font=font)
        draw.text((20, 60), f"Current: {self.current}", fill=_CURRENT_COLOUR, font=font)
        tx = self._tick_x(self.target)
        top = _AXIS_Y - 75
        draw.line([(tx, _AXIS_Y), (tx, top)], fill=_TARGET_COLOUR, width=4)
        flag_dir = -1 if tx + 28 > IMAGE_SIZE - 2 else 1
        draw.polygon([(tx, top), (tx + flag_dir * 28, top + 11), (tx, top + 22)], fill=_TARGET_COLOUR)
        cx = self._tick_x(self.current)
        draw.ellipse([(cx - 12, _AXIS_Y - 12), (cx + 12, _AXIS_Y + 12)], fill=_CURRENT_COLOUR)
        return image


NUMBERLINE_PROMPT = TaskPrompt(
    description="You play Number Line. Move the current number to the target number.",
    actions=["-", "+"],
    action_doc="+ : increase the current number by 1\n- : decrease the current number by 1",
    example=f"{ACTION_TAG} +",
)
"""The NumberLine prompt, kept short: a 135M model reads it every turn."""


def numberline_oracle(env: gymnasium.Env) -> OracleAction:
    """NumberLine's obvious optimal policy: step towards the target."""
    inner = env.unwrapped
    if inner.current < inner.target:
        return OracleAction(1, f"{inner.current} is below the target {inner.target}, so increase.")
    return OracleAction(0, f"{inner.current} is above the target {inner.target}, so decrease.")


TASKS = {"NumberLine": TaskSpec(name="NumberLine", prompt=NUMBERLINE_PROMPT, oracle=numberline_oracle)}
"""This module's task (see :data:`vlmq_core.envs.CATALOG`)."""
