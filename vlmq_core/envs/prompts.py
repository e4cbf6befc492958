"""Per-task prompts in one place: task description, action docs, reply syntax example (METHOD.md, "Setting")."""

from __future__ import annotations

from dataclasses import dataclass

ACTION_TAG = "[action]"
"""The tag after which a reply's action text starts."""


@dataclass(frozen=True)
class TaskPrompt:
    """Everything but the observation that the model is told about a task."""

    description: str
    """What the task is and what the goal is."""
    actions: list[str]
    """The valid action strings; index i is the inner environment's action i."""
    action_doc: str
    """Text documenting each action, one per line."""
    example: str
    """An example reply showing the syntax, e.g. ``[action] +``."""


NUMBERLINE_PROMPT = TaskPrompt(
    description="You play Number Line. Move the current number to the target number.",
    actions=["-", "+"],
    action_doc="+ : increase the current number by 1\n- : decrease the current number by 1",
    example=f"{ACTION_TAG} +",
)
"""The NumberLine prompt, kept short: a 135M model reads it every turn."""

PROMPTS: dict[str, TaskPrompt] = {"vlmq/NumberLine-v0": NUMBERLINE_PROMPT}
"""Task prompts keyed by gymnasium env id."""


def format_prompt(task: TaskPrompt, observation: str, error: str | None = None) -> str:
    """The full user prompt: description, action docs, reply format + example, then the observation.

    With `error`, the observation part starts with "Your previous reply was invalid: <error>".
    """
    lines = [
        task.description,
        "Actions:",
        task.action_doc,
        f"Reply with `{ACTION_TAG}` followed by exactly one action. Example:",
        task.example,
    ]
    if error is not None:
        lines.append(f"Your previous reply was invalid: {error}")
    lines.append(f"Observation: {observation}")
    return "\n".join(lines)
