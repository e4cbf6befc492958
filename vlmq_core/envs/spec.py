"""What a task is: its prompt, state text, reward-wrapper settings, reply parser and oracle (:class:`TaskSpec`).

Each task module (``numberline.py``, ``blackjack.py``, ...) holds its raw env, its prompt, its oracle and its
:class:`TaskSpec` in ``TASKS``; :mod:`vlmq_core.envs` lists the modules and builds any task by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium

from vlmq_core.envs.text_action import TaskPrompt, TextActionConfig, invalid_reason, parse_action

Parser = Callable[[str, Sequence[str]], Any]
"""``parser(reply, actions) -> the raw env's action or None`` (None: the reply is invalid). The action is an index
into `actions` for the discrete tasks, a canonical BrowserGym call string for the web tasks."""


@dataclass(frozen=True)
class OracleAction:
    """What an oracle decides: the raw env's action and a short reason (its optional "thought")."""

    action: int | str
    """The raw env's action: an index for discrete tasks, a canonical BrowserGym call for web tasks."""
    thought: str = ""


Oracle = Callable[[gymnasium.Env], OracleAction]
"""``oracle(raw_env) -> OracleAction``: a strong policy reading the raw (unwrapped) env's state."""


def state_text(env: gymnasium.Env) -> str:
    """The raw env's own ``text()`` state summary, through any wrappers; TypeError if it has none."""
    inner = env.unwrapped
    if not callable(getattr(inner, "text", None)):
        raise TypeError(f"{type(inner).__name__} has no text() state summary; give the TaskSpec a text_fn")
    return inner.text()


@dataclass(frozen=True)
class TaskSpec:
    """Everything :func:`vlmq_core.envs.make_env` needs to put one task behind the text-action wrapper."""

    name: str
    """Short name accepted by `make_env`, e.g. ``NumberLine``; the gymnasium id is ``vlmq/<name>-v0``."""
    prompt: TaskPrompt
    """Task description, action docs and syntax example (actions ordered as the raw env's Discrete actions)."""
    text_fn: Callable[[gymnasium.Env], str] = state_text
    """State summary of the raw env (the observation text o_t); default :func:`state_text`."""
    text_config: TextActionConfig = field(default_factory=TextActionConfig)
    """Reward-wrapper settings (METHOD.md Table 4; the default is the Gym Cards column)."""
    parser: Parser = parse_action
    """Maps a reply to an action index (Gym Cards: exact match after the tag)."""
    invalid_reason: Callable[[str, Sequence[str]], str] = invalid_reason
    """Short explanation of why a reply is invalid, shown in the next prompt."""
    memory_gb: float = 0.0
    """Resident memory one env of this task needs beyond the process (a web task's two browsers); collection runs
    at most as many envs at once as free memory holds (0: no cap)."""
    unseen: Callable[[str], str] | None = None
    """``unseen(summary) -> the part of the state summary the render does not show``, which an image-only prompt
    keeps (BabyAI: the mission, an instruction rather than something in view). None: the render shows it all."""
    oracle: Oracle | None = None
    """A strong policy standing in for "a more capable model" (None if the task has none)."""
    random_action: Callable[[gymnasium.Env, Any], str] | None = None
    """``random_action(raw_env, rng) -> action text`` for tasks whose valid actions depend on the state (web pages:
    a click on one of the page's elements); None: a uniform draw from the prompt's fixed actions."""
    partial_prefix: Callable[[Any], str] | None = None
    """``partial_prefix(rng) -> the start of a reply`` for the ``partial`` strategy (the model completes it): a web
    task's ``[action] click(`` with a random allowed function. None: the task has no partial strategy."""

    @property
    def env_id(self) -> str:
        """The raw env's gymnasium id, ``vlmq/<name>-v0``."""
        return f"vlmq/{self.name}-v0"
