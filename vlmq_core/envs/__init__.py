"""Environments behind text-action wrappers, and the one list of tasks.

``import vlmq_core`` registers every task's raw env with gymnasium as ``vlmq/<Name>-v0`` (as ``import minigrid``
does), cheaply: only gymnasium is imported; a task's module (and what it needs, e.g. minigrid for BabyAI) is
imported when one of its envs is made. :func:`make_env` builds any task behind the text-action wrapper.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import gymnasium

if TYPE_CHECKING:
    from vlmq_core.envs.spec import TaskSpec
    from vlmq_core.envs.text_action import TextActionConfig, TextActionEnv

BABYAI_LEVELS: tuple[str, ...] = ("GoToRedBall", "GoToObj", "GoToLocal", "PickupLoc", "PutNextLocal", "GoTo")
"""The BabyAI levels vlmq offers: minigrid's ``BabyAI-<level>-v0`` for each."""

MINIWOB_TASKS: tuple[str, ...] = (
    "click-tab", "click-tab-2-easy", "click-dialog-2", "click-shape", "click-checkboxes-transfer", "click-shades",
    "click-checkboxes", "click-checkboxes-large", "click-tab-2-hard", "click-test-transfer", "click-collapsible-2",
    "click-test", "click-menu", "click-collapsible", "click-checkboxes-soft", "click-button", "click-tab-2-medium",
    "click-tab-2", "click-option", "click-menu-2", "click-color", "click-widget", "click-dialog", "click-link",
    "click-scroll-list", "click-button-sequence", "click-test-2",
)  # fmt: skip
"""The paper's 27 MiniWoB++ click tasks, in its appendix tables' order: ``MiniWoB-<task>`` for each (BrowserGym's
``browsergym/miniwob.<task>`` on Debian's Chromium, :mod:`vlmq_core.envs.miniwob`)."""

CATALOG: dict[str, tuple[str, str, dict]] = {
    "NumberLine": ("numberline", "NumberLineEnv", {}),
    "Blackjack": ("blackjack", "BlackjackEnv", {}),
    "EZPoints": ("ezpoints", "EZPointsEnv", {}),
    "Points24": ("points24", "PointsEnv", {}),
    **{f"BabyAI-{level}": ("babyai", "BabyAIEnv", {"level": level}) for level in BABYAI_LEVELS},
    **{f"MiniWoB-{task}": ("miniwob", "MiniWoBEnv", {"task": task}) for task in MINIWOB_TASKS},
}
"""Every task: short name -> (module in ``vlmq_core.envs``, raw env class, its constructor kwargs). The module
holds the task's :class:`~vlmq_core.envs.spec.TaskSpec` in ``TASKS[name]``."""


def env_id(name: str) -> str:
    """The gymnasium id of a task's raw env: ``vlmq/<name>-v0``."""
    return f"vlmq/{name}-v0"


def register_envs() -> None:
    """Register every task's raw env with gymnasium (entry points are strings: nothing is imported)."""
    for name, (module, cls, kwargs) in CATALOG.items():
        if env_id(name) not in gymnasium.registry:
            gymnasium.register(env_id(name), entry_point=f"vlmq_core.envs.{module}:{cls}", kwargs=dict(kwargs))


def task_name(name: str) -> str:
    """The short name for a short name or a gymnasium id; ValueError naming the known tasks otherwise."""
    short = name.removeprefix("vlmq/").removesuffix("-v0") if name.startswith("vlmq/") else name
    if short not in CATALOG:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(CATALOG)} (or their vlmq/<name>-v0 ids)")
    return short


def get_task(name: str) -> TaskSpec:
    """The :class:`~vlmq_core.envs.spec.TaskSpec` of a task, by short name (``"NumberLine"``) or gymnasium id."""
    short = task_name(name)
    return importlib.import_module(f"vlmq_core.envs.{CATALOG[short][0]}").TASKS[short]


def make_env(
    name: str,
    seed: int | None = None,
    text_config: TextActionConfig | None = None,
    show_text: bool = True,
    **env_kwargs,
) -> TextActionEnv:
    """Build the text-action env for `name` (a short name like "NumberLine" or an id like "vlmq/NumberLine-v0").

    `seed` seeds the env's generator once, so the sequence of episodes from later `reset()` calls
    (without a seed) is reproducible. `text_config` overrides the task's Table 4 defaults; `show_text=False` keeps
    the state summary out of the prompt (image-only prompting, for VLMs); `env_kwargs` go to
    the raw env's constructor (e.g. ``view="pov"`` for BabyAI). Unknown names raise ValueError listing the known ones.
    """
    from vlmq_core.envs.text_action import TextActionEnv

    spec = get_task(name)
    register_envs()
    inner = gymnasium.make(spec.env_id, **env_kwargs)
    if seed is not None:
        inner.reset(seed=seed)
    config = text_config if text_config is not None else spec.text_config
    return TextActionEnv(
        inner,
        spec.prompt,
        config,
        text_fn=spec.text_fn,
        parser=spec.parser,
        reason_fn=spec.invalid_reason,
        random_fn=spec.random_action,
        show_text=show_text,
        unseen_fn=spec.unseen,
    )


__all__ = ["BABYAI_LEVELS", "MINIWOB_TASKS", "CATALOG", "env_id", "get_task", "make_env", "register_envs", "task_name"]
