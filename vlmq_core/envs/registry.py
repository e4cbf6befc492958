"""One place that knows every task: its gymnasium id, prompt, state-summary text, reward-wrapper settings,
reply parser and oracle. Each environment module registers a :class:`TaskSpec` on import;
:func:`vlmq_core.envs.make_env` builds any of them behind the text-action wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium

from vlmq_core.envs.prompts import TaskPrompt
from vlmq_core.envs.text_action import TextActionConfig, invalid_reason, parse_action

Parser = Callable[[str, Sequence[str]], "int | None"]
"""``parser(reply, actions) -> action index or None`` (None: the reply is invalid)."""


@dataclass(frozen=True)
class OracleAction:
    """What an oracle decides: the raw env's action index and a short reason (its optional "thought")."""

    action: int
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
    """Everything `make_env` needs to build one task behind the text-action wrapper."""

    env_id: str
    """Gymnasium id of the raw env (Discrete actions ordered as ``prompt.actions``), e.g. ``vlmq/NumberLine-v0``."""
    name: str
    """Short name accepted by `make_env`, e.g. ``NumberLine``."""
    entry_point: str | Callable[..., gymnasium.Env]
    """Gymnasium entry point of the raw env."""
    prompt: TaskPrompt
    """Task description, action docs and syntax example."""
    text_fn: Callable[[gymnasium.Env], str] = state_text
    """State summary of the raw env (the observation text o_t); default :func:`state_text`."""
    text_config: TextActionConfig = field(default_factory=TextActionConfig)
    """Reward-wrapper defaults of the task's domain (METHOD.md Table 4)."""
    parser: Parser = parse_action
    """Maps a reply to an action index (Gym Cards: exact match after the tag)."""
    invalid_reason: Callable[[str, Sequence[str]], str] = invalid_reason
    """Short explanation of why a reply is invalid, shown in the next prompt."""
    oracle: Oracle | None = None
    """A strong policy standing in for "a more capable model" (None if the task has none)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the raw env's constructor at registration."""
    domain: str = "gym_cards"
    """``gym_cards``, ``babyai`` or ``miniwob``: which Table 4 column the defaults come from."""


TASKS: dict[str, TaskSpec] = {}
"""Registered tasks keyed by gymnasium env id."""
_SHORT_NAMES: dict[str, str] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Register `spec` with vlmq (and its raw env with gymnasium, once). Returns `spec`."""
    if spec.env_id not in gymnasium.registry:
        gymnasium.register(spec.env_id, entry_point=spec.entry_point, kwargs=dict(spec.env_kwargs))
    TASKS[spec.env_id] = spec
    _SHORT_NAMES[spec.name] = spec.env_id
    return spec


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` for a short name (``"NumberLine"``) or env id; ValueError listing known names."""
    env_id = _SHORT_NAMES.get(name, name)
    if env_id not in TASKS:
        known = ", ".join(sorted(_SHORT_NAMES))
        raise ValueError(f"unknown environment {name!r}; known short names: {known} (or their vlmq/... ids)")
    return TASKS[env_id]
