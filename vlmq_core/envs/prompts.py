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

BLACKJACK_PROMPT = TaskPrompt(
    description="You play Blackjack. Get closer to 21 than the dealer without going over. "
    "An ace counts 1 or 11; J, Q, K count 10. The dealer draws until 17 or more.",
    actions=["stand", "hit"],
    action_doc="stand : keep your cards, the dealer plays\nhit : take one more card",
    example=f"{ACTION_TAG} hit",
)
"""The Blackjack prompt (actions in gymnasium's order: 0 = stand, 1 = hit)."""

_NUMBERS = [str(n) for n in range(1, 11)]

EZPOINTS_PROMPT = TaskPrompt(
    description="You play EZPoints. Write a formula equal to 12 with both cards, one token per turn. "
    "Use each card once. A counts 1; J, Q, K count 10.",
    actions=[*_NUMBERS, "+", "*", "="],
    action_doc="1 to 10 : write a card's number\n+ or * : write an operator\n= : finish and check the formula",
    example=f"{ACTION_TAG} 4",
)
"""The EZPoints prompt; actions ``1``..``10``, ``+``, ``*``, ``=`` (RL4VLM's order)."""

POINTS24_PROMPT = TaskPrompt(
    description="You play Points24. Write a formula equal to 24 with all four cards, one token per turn. "
    "Use each card once. A counts 1; J, Q, K count 10.",
    actions=[*_NUMBERS, "+", "-", "*", "/", "(", ")", "="],
    action_doc="1 to 10 : write a card's number\n+ - * / ( ) : write an operator or bracket\n"
    "= : finish and check the formula",
    example=f"{ACTION_TAG} 10",
)
"""The Points24 prompt; actions ``1``..``10``, ``+ - * / ( )``, ``=`` (RL4VLM's order)."""

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


BABYAI_PROMPTS: dict[str, TaskPrompt] = {level: _babyai_prompt(goal) for level, goal in _BABYAI_GOALS.items()}
"""BabyAI prompts keyed by level name (``GoToRedBall``, ...); the registered levels are exactly these."""

PROMPTS: dict[str, TaskPrompt] = {
    "vlmq/NumberLine-v0": NUMBERLINE_PROMPT,
    "vlmq/Blackjack-v0": BLACKJACK_PROMPT,
    "vlmq/EZPoints-v0": EZPOINTS_PROMPT,
    "vlmq/Points24-v0": POINTS24_PROMPT,
    **{f"vlmq/BabyAI-{level}-v0": prompt for level, prompt in BABYAI_PROMPTS.items()},
}
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
