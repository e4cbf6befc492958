"""EZPoints (RL4VLM gym_cards): write a formula equal to 12 with two cards, using ``+`` and ``*``.

Rules are :class:`~vlmq_core.envs.points24.PointsEnv`'s with two cards, target 12, operators ``+ *`` (no
brackets) and actions ``1`` .. ``10``, ``+``, ``*``, ``=``. Every deal has a solution: the two cards are
drawn from the infinite deck and redrawn (with the env's own generator, so seeding reproduces the deal)
until their numbers sum or multiply to 12, which 19 of 169 draws do. Choice: RL4VLM instead draws a first
card from 2..K and makes the second one complete a sum or a product; every solvable pair is possible
in both schemes, with different frequencies.
"""

from __future__ import annotations

import gymnasium

from vlmq_core.envs.formula import token_completion
from vlmq_core.envs.points24 import NUMBER_TOKENS, PointsEnv, parse_points_action, plan_action, raw_points_env
from vlmq_core.envs.spec import OracleAction, TaskSpec
from vlmq_core.envs.text_action import ACTION_TAG, TaskPrompt

EZPOINTS_PROMPT = TaskPrompt(
    description="You play EZPoints. Write a formula equal to 12 with both cards, one token per turn. "
    "Use each card once. A counts 1; J, Q, K count 10.",
    actions=[*NUMBER_TOKENS, "+", "*", "="],
    action_doc="1 to 10 : write a card's number\n+ or * : write an operator\n= : finish and check the formula",
    example=f"{ACTION_TAG} 4",
)
"""The EZPoints prompt; actions ``1``..``10``, ``+``, ``*``, ``=`` (RL4VLM's order)."""


class EZPointsEnv(PointsEnv):
    """PointsEnv with EZPoints' settings: 2 cards, target 12, ``+ *``, solvable deals, 10 steps at most.

    A formula has at most 3 tokens (each card once, no brackets), so the 5-token cap (RL4VLM's) never binds.
    """

    def __init__(self, max_steps: int = 10, render_mode: str | None = "rgb_array"):
        super().__init__(
            n_cards=2,
            target=12,
            operators=("+", "*"),
            max_formula_len=5,
            max_steps=max_steps,
            solvable_only=True,
            render_mode=render_mode,
        )


def ezpoints_oracle(env: gymnasium.Env) -> OracleAction:
    """Write the first solution (numbers ascending, ``+`` before ``*``) that continues the formula, then
    ``=``; ``=`` at once when the formula can no longer make 12 (after a corrupted action)."""
    inner = raw_points_env(env)
    ops = tuple(t for t in inner.operators if t not in ("(", ")"))
    plan = token_completion(
        inner.numbers, inner.target, inner.formula, operators=ops, parens=False, max_len=inner.max_formula_len
    )
    return plan_action(inner, plan)


TASKS = {
    "EZPoints": TaskSpec(name="EZPoints", prompt=EZPOINTS_PROMPT, parser=parse_points_action, oracle=ezpoints_oracle)
}
"""This module's task (see :data:`vlmq_core.envs.CATALOG`)."""
