"""Oracles as repliers: a task's strong policy written as model replies, optionally with a short thought and
corrupted at a chosen rate, to build datasets of known quality ("a more capable model" stand-in)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmq_core.envs import CATALOG, get_task
from vlmq_core.envs.text_action import ACTION_TAG, TextActionEnv


@dataclass
class OracleConfig:
    """How an oracle's decisions become replies."""

    corrupt_rate: float = 0.0
    """Probability that a turn's action is replaced by a uniformly random valid action (may equal the oracle's)."""
    thought: bool = False
    """Prefix the reply with ``Thought: <the oracle's reason>`` on its own line."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.corrupt_rate <= 1.0:
            raise ValueError(f"OracleConfig.corrupt_rate must be in [0, 1], got {self.corrupt_rate}")


def oracle_reply(env: TextActionEnv, rng: np.random.Generator, cfg: OracleConfig | None = None) -> str:
    """The reply the task's oracle gives in `env`'s current state, e.g. ``"[action] +"``.

    With probability ``cfg.corrupt_rate`` the action is a uniformly random valid one (the thought, if any,
    is then the oracle's, which is what a confidently wrong model looks like). Raises ValueError for a task
    without an oracle.
    """
    cfg = cfg if cfg is not None else OracleConfig()
    spec = get_task(env.unwrapped.spec.id)
    if spec.oracle is None:
        raise ValueError(f"task {spec.name!r} has no oracle; tasks with one: {', '.join(tasks_with_oracles())}")
    decision = spec.oracle(env.unwrapped)
    if cfg.corrupt_rate > 0 and rng.random() < cfg.corrupt_rate:
        text = env.random_reply(rng)
    elif isinstance(decision.action, str):  # a call, written as is (web tasks)
        text = f"{ACTION_TAG} {decision.action}"
    else:
        text = f"{ACTION_TAG} {env.valid_actions[decision.action]}"
    if cfg.thought and decision.thought:
        text = f"Thought: {decision.thought}\n{text}"
    return text


def tasks_with_oracles() -> list[str]:
    """Short names of the registered tasks that have an oracle."""
    return sorted(name for name in CATALOG if get_task(name).oracle is not None)
