"""Environments behind text-action wrappers. Each task module registers a :class:`TaskSpec` (and its raw
env with gymnasium) on import; :func:`make_env` builds any registered task by short name or env id."""

from __future__ import annotations

import gymnasium

from vlmq_core.envs.babyai import BABYAI_LEVELS, BabyAIEnv, parse_babyai_action
from vlmq_core.envs.blackjack import BLACKJACK_ID, BlackjackEnv
from vlmq_core.envs.ezpoints import EZPOINTS_ID, EZPointsEnv
from vlmq_core.envs.limits import task_limits
from vlmq_core.envs.numberline import NumberLineEnv
from vlmq_core.envs.points24 import POINTS24_ID, PointsEnv
from vlmq_core.envs.prompts import NUMBERLINE_PROMPT, PROMPTS, TaskPrompt, format_prompt
from vlmq_core.envs.registry import TASKS, OracleAction, TaskSpec, get_task, register_task
from vlmq_core.envs.text_action import TextActionConfig, TextActionEnv, parse_action

NUMBERLINE_ID = "vlmq/NumberLine-v0"
"""Gymnasium id of the NumberLine environment."""


def numberline_oracle(env: gymnasium.Env) -> OracleAction:
    """NumberLine's obvious optimal policy: step towards the target."""
    inner = env.unwrapped
    if inner.current < inner.target:
        return OracleAction(1, f"{inner.current} is below the target {inner.target}, so increase.")
    return OracleAction(0, f"{inner.current} is above the target {inner.target}, so decrease.")


register_task(
    TaskSpec(
        env_id=NUMBERLINE_ID,
        name="NumberLine",
        entry_point="vlmq_core.envs.numberline:NumberLineEnv",
        prompt=NUMBERLINE_PROMPT,
        oracle=numberline_oracle,
    )
)

ENV_IDS: tuple[str, ...] = tuple(TASKS)
"""All environment ids this package registers."""


def make_env(
    name: str, seed: int | None = None, text_config: TextActionConfig | None = None, **env_kwargs
) -> TextActionEnv:
    """Build the text-action env for `name` (a short name like "NumberLine" or an id like "vlmq/NumberLine-v0").

    `seed` seeds the env's generator once, so the sequence of episodes from later `reset()` calls
    (without a seed) is reproducible. `text_config` overrides the task's Table 4 defaults; `env_kwargs` go to
    the raw env's constructor (e.g. ``view="pov"`` for BabyAI).
    Unknown names raise ValueError listing the known ones.
    """
    spec = get_task(name)
    inner = gymnasium.make(spec.env_id, **env_kwargs)
    if seed is not None:
        inner.reset(seed=seed)
    config = text_config if text_config is not None else spec.text_config
    return TextActionEnv(
        inner, spec.prompt, config, text_fn=spec.text_fn, parser=spec.parser, reason_fn=spec.invalid_reason
    )


__all__ = [
    "BABYAI_LEVELS",
    "BLACKJACK_ID",
    "ENV_IDS",
    "EZPOINTS_ID",
    "NUMBERLINE_ID",
    "NUMBERLINE_PROMPT",
    "POINTS24_ID",
    "PROMPTS",
    "TASKS",
    "BabyAIEnv",
    "BlackjackEnv",
    "EZPointsEnv",
    "NumberLineEnv",
    "OracleAction",
    "PointsEnv",
    "TaskPrompt",
    "TaskSpec",
    "TextActionConfig",
    "TextActionEnv",
    "format_prompt",
    "get_task",
    "make_env",
    "parse_action",
    "parse_babyai_action",
    "register_task",
    "task_limits",
]
