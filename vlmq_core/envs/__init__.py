"""Environments: NumberLine (registered with gymnasium on import), task prompts and the text-action wrapper."""

from __future__ import annotations

import gymnasium

from vlmq_core.envs.numberline import NumberLineEnv
from vlmq_core.envs.prompts import NUMBERLINE_PROMPT, PROMPTS, TaskPrompt, format_prompt
from vlmq_core.envs.text_action import TextActionConfig, TextActionEnv, parse_action

NUMBERLINE_ID = "vlmq/NumberLine-v0"
"""Gymnasium id of the NumberLine environment."""

ENV_IDS: tuple[str, ...] = (NUMBERLINE_ID,)
"""All environment ids this package registers."""

_SHORT_NAMES: dict[str, str] = {"NumberLine": NUMBERLINE_ID}
"""Short names accepted by `make_env`, mapped to env ids."""

if NUMBERLINE_ID not in gymnasium.registry:
    gymnasium.register(NUMBERLINE_ID, entry_point="vlmq_core.envs.numberline:NumberLineEnv")


def _numberline_text(env: gymnasium.Env) -> str:
    """The NumberLine state summary of a (possibly wrapped) NumberLine env."""
    inner = env.unwrapped
    if not isinstance(inner, NumberLineEnv):
        raise TypeError(f"expected a NumberLineEnv, got {type(inner).__name__}")
    return inner.text()


def make_env(name: str, seed: int | None = None, text_config: TextActionConfig | None = None) -> TextActionEnv:
    """Build the text-action env for `name` ("NumberLine" or "vlmq/NumberLine-v0").

    `seed` seeds the env's generator once, so the sequence of episodes from later `reset()` calls
    (without a seed) is reproducible. Unknown names raise ValueError listing the known ones.
    """
    env_id = _SHORT_NAMES.get(name, name)
    if env_id not in ENV_IDS:
        known = ", ".join([*_SHORT_NAMES, *ENV_IDS])
        raise ValueError(f"unknown environment {name!r}; known: {known}")
    inner = gymnasium.make(env_id)
    if seed is not None:
        inner.reset(seed=seed)
    return TextActionEnv(inner, PROMPTS[env_id], text_config, text_fn=_numberline_text)


__all__ = [
    "ENV_IDS",
    "NUMBERLINE_ID",
    "NUMBERLINE_PROMPT",
    "PROMPTS",
    "NumberLineEnv",
    "TaskPrompt",
    "TextActionConfig",
    "TextActionEnv",
    "format_prompt",
    "make_env",
    "parse_action",
]
