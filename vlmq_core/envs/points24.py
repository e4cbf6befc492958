"""Points24 (RL4VLM gym_cards): write a formula equal to 24 with four cards, one token per step.

:class:`PointsEnv` holds the rules shared with EZPoints (:mod:`vlmq_core.envs.ezpoints`):

- Deal: `n_cards` cards from the infinite deck (rank uniform 1..13, as RL4VLM samples them); a card's
  number is its value, A = 1 and J, Q, K = 10. Points24 deals are not filtered for solvability.
- Actions: the tokens ``1`` .. ``10``, then the operators (``+ - * / ( )`` for Points24), then ``=``.
- A number or operator token is appended to the formula with reward 0, unless it is *rejected* (reward -1,
  formula unchanged, the episode goes on; `info["rejected"]` says why): a number that is not on a card or
  whose cards are all used already (each card is used once); a token that breaks the syntax
  (:func:`~vlmq_core.envs.formula.next_token_error`: two operators or two numbers in a row, ``)`` without
  ``(``, ...); or a token beyond `max_formula_len` tokens. Choice: RL4VLM appends such tokens anyway (a
  blank for a bad number) and lets ``=`` fail; rejecting them keeps the formula a valid prefix, which
  the picture, the text summary and the oracle rely on.
- ``=`` ends the episode (terminated): +10 if the formula uses every card and evaluates exactly
  (fractions) to the target, else -1 (also for an incomplete formula or a division by zero).
- Truncated after `max_steps` steps without ``=`` (no extra reward).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from functools import cache, lru_cache
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from PIL import ImageDraw

from vlmq_core.envs import cards as C
from vlmq_core.envs.formula import (
    OPERATORS,
    FormulaError,
    closest_expression,
    evaluate,
    find_expression,
    group_completion,
    next_token_error,
    render,
    solvable,
    token_completion,
)
from vlmq_core.envs.spec import OracleAction, TaskSpec
from vlmq_core.envs.text_action import ACTION_TAG, TaskPrompt, TextActionConfig, after_tag, parse_action

NUMBER_TOKENS = tuple(str(n) for n in range(1, 11))
"""The number tokens ``1`` .. ``10`` (the first ten actions of both points games)."""
POINTS24_PROMPT = TaskPrompt(
    description="You play Points24. Write a formula equal to 24 with all four cards, one token per turn. "
    "Use each card once. A counts 1; J, Q, K count 10.",
    actions=[*NUMBER_TOKENS, "+", "-", "*", "/", "(", ")", "="],
    action_doc="1 to 10 : write a card's number\n+ - * / ( ) : write an operator or bracket\n"
    "= : finish and check the formula",
    example=f"{ACTION_TAG} 10",
)
"""The Points24 prompt; actions ``1``..``10``, ``+ - * / ( )``, ``=`` (RL4VLM's order)."""
POINTS24_MAX_STEPS = 20
"""Step limit of Points24, in the raw env and in its text wrapper (whose other settings are the Gym Cards
defaults): the Gym Cards limit of 10 is too short, a formula needs up to 11 tokens plus ``=`` (four
numbers, three operators, two bracket pairs). RL4VLM has no wrapper limit, only a 20-token formula cap."""


class PointsEnv(gymnasium.Env):
    """A points game: build a formula from the cards' numbers equal to `target` (rules: module docstring).

    Observation: a (300, 300, 3) uint8 picture of the cards, the target and the formula so far.
    `info` (also on reset) is :meth:`state`.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        n_cards: int = 4,
        target: int = 24,
        operators: Sequence[str] = (*OPERATORS, "(", ")"),
        max_formula_len: int = 20,
        max_steps: int = POINTS24_MAX_STEPS,
        solvable_only: bool = False,
        render_mode: str | None = "rgb_array",
    ):
        """Build the env. `operators` are the non-number tokens besides ``=``, in action order (brackets
        allowed or not by their presence); `solvable_only` redeals until the cards have a solution."""
        if n_cards not in (2, 3, 4):
            raise ValueError(f"n_cards must be 2, 3 or 4, got {n_cards}")
        unknown = set(operators) - {*OPERATORS, "(", ")"}
        if unknown:
            raise ValueError(f"unknown operators {sorted(unknown)}; allowed: + - * / ( )")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.n_cards = n_cards
        self.target = target
        self.operators = tuple(operators)
        self.parens = "(" in self.operators
        self.max_formula_len = max_formula_len
        self.max_steps = max_steps
        self.solvable_only = solvable_only
        self.render_mode = render_mode
        self.tokens: tuple[str, ...] = (*NUMBER_TOKENS, *self.operators, "=")
        self.action_space = spaces.Discrete(len(self.tokens))
        self.observation_space = spaces.Box(0, 255, (C.IMAGE_SIZE, C.IMAGE_SIZE, 3), dtype=np.uint8)
        self.cards: list[C.Card] = []
        self.formula: list[str] = []
        self.steps = 0
        self.rejected: str | None = None
        self.result: Fraction | None = None
        self.done = False
        self.reward = 0.0

    @property
    def numbers(self) -> list[int]:
        """The cards' numbers (A = 1, J/Q/K = 10), in deal order."""
        return [c.value for c in self.cards]

    def has_solution(self, numbers: Sequence[int]) -> bool:
        """Whether a formula with this env's tokens uses each of `numbers` once and equals the target."""
        return _has_solution(tuple(sorted(numbers)), self.target, self.operators)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Deal the cards (redealing until solvable when `solvable_only`) and clear the formula."""
        super().reset(seed=seed)
        while True:
            self.cards = [C.draw_card(self.np_random) for _ in range(self.n_cards)]
            if not self.solvable_only or self.has_solution(self.numbers):
                break
        self.formula = []
        self.steps = 0
        self.rejected = None
        self.result = None
        self.done = False
        self.reward = 0.0
        return self.render(), self.state()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Write the token of `action` (see the module docstring for rewards)."""
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}; expected 0..{len(self.tokens) - 1} ({' '.join(self.tokens)})")
        if self.done:
            raise RuntimeError("the episode is over: call reset()")
        token = self.tokens[int(action)]
        self.steps += 1
        if token == "=":
            self.done = True
            self.result = self._value()
            self.reward = 10.0 if self.solved() else -1.0
            self.rejected = None
        else:
            self.rejected = self.token_error(token)
            if self.rejected is None:
                self.formula.append(token)
            self.reward = 0.0 if self.rejected is None else -1.0
        truncated = not self.done and self.steps >= self.max_steps
        return self.render(), self.reward, self.done, truncated, self.state()

    def token_error(self, token: str) -> str | None:
        """Why `token` would be rejected now, or None if it would be appended."""
        if token in NUMBER_TOKENS:
            have = self.numbers.count(int(token))
            if have == 0:
                return f"{token} is not on your cards"
            if self.formula.count(token) >= have:
                return f"your {token} is already used" if have == 1 else f"all your {token}s are already used"
        syntax = next_token_error(self.formula, token)
        if syntax is not None:
            return syntax
        if len(self.formula) >= self.max_formula_len:
            return f"the formula is limited to {self.max_formula_len} tokens"
        return None

    def numbers_left(self) -> list[int]:
        """The cards' numbers not yet in the formula (sorted)."""
        left = Counter(self.numbers)
        left.subtract(int(t) for t in self.formula if t in NUMBER_TOKENS)
        return sorted(left.elements())

    def solved(self) -> bool:
        """Whether the formula uses every card and equals the target."""
        return not self.numbers_left() and self._value() == self.target

    def _value(self) -> Fraction | None:
        """The formula's value, or None if it is incomplete or divides by zero."""
        try:
            return evaluate(self.formula)
        except FormulaError:
            return None

    def state(self) -> dict[str, Any]:
        """The state as plain Python values."""
        return {
            "cards": [c.code for c in self.cards],
            "numbers": self.numbers,
            "formula": list(self.formula),
            "steps": self.steps,
            "rejected": self.rejected,
            "done": self.done,
        }

    def formula_text(self) -> str:
        """The formula as space-separated tokens, with `` = value`` once finished."""
        text = " ".join(self.formula) if self.formula else "(empty)"
        if self.done:
            text += " = " + ("invalid" if self.result is None else _fraction_text(self.result))
        return text

    def text(self) -> str:
        """The state as text, e.g. ``"Cards: 4, Q. Formula: 4 *"``; after ``=`` the value and the result."""
        text = f"Cards: {', '.join(c.label for c in self.cards)}. Formula: {self.formula_text()}"
        if self.done:
            text += ". Solved." if self.reward > 0 else f". Not {self.target} with all cards."
        return text

    def render(self) -> np.ndarray:
        """The current picture as a (300, 300, 3) uint8 array: target, cards, formula (wrapped)."""
        image = C.table()
        draw = ImageDraw.Draw(image)
        draw.text((10, 8), f"Target: {self.target}", fill=C.TEXT_COLOUR, font=C.font(20))
        width, height, gap = _CARD_SIZES[self.n_cards]
        x0 = (C.IMAGE_SIZE - self.n_cards * width - (self.n_cards - 1) * gap) // 2
        faces = [C.card_face(c, width, height) for c in self.cards]
        C.paste_row(image, faces, x0, 40, C.IMAGE_SIZE - 2 * x0, gap=gap)
        y = 40 + height + 14
        draw.text((10, y), "Formula:", fill=C.TEXT_COLOUR, font=C.font(18))
        size = 20
        for line in C.text_lines(self.formula_text(), size, C.IMAGE_SIZE - 20):
            y += size + 6
            draw.text((10, y), line, fill=C.TEXT_COLOUR, font=C.font(size))
        if self.done:
            verdict = "Solved" if self.reward > 0 else "Not solved"
            draw.text((C.IMAGE_SIZE // 2, 284), verdict, fill=(255, 230, 90), font=C.font(20), anchor="mm")
        return C.to_array(image)


_CARD_SIZES = {2: (100, 140, 24), 3: (80, 112, 14), 4: (64, 90, 10)}
"""Card width, height and gap in the picture by number of cards."""


def _fraction_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


@cache
def _has_solution(numbers: tuple[int, ...], target: int, operators: tuple[str, ...]) -> bool:
    if set(operators) == {*OPERATORS, "(", ")"}:
        return solvable(numbers, target)
    ops = tuple(t for t in operators if t in OPERATORS)
    return token_completion(numbers, target, operators=ops, parens="(" in operators) is not None


# ---------------------------------------------------------------- reply parser

_BOLD_COLON = re.compile(r"^\s*(?:\*\*|__)?\s*:?\s*(?:\*\*|__)?")
_TRAILING_BOLD = re.compile(r"\s*(?:\*\*|__)$")
_NO_STAR_DECORATION = " \t\r\n`_#>\"'"


def parse_points_action(reply: str, actions: Sequence[str]) -> int | None:
    """:func:`~vlmq_core.envs.text_action.parse_action`, plus the ``*`` token.

    The shared parser strips ``*`` as markdown, so a reply whose action is ``*`` would never parse. When it
    finds nothing, this looks again after the tag: drops a bold marker and ``:`` right after the tag
    (``**[action]:** *``, ``**[action]**: *``), a trailing bold marker and whitespace, backticks and quotes;
    exactly ``*`` left is the ``*`` action. Every other reply parses as with the shared parser.
    """
    index = parse_action(reply, actions)
    if index is not None or "*" not in actions:
        return index
    rest = after_tag(reply)
    if rest is None:
        return None
    text = _BOLD_COLON.sub("", rest, count=1).strip(_NO_STAR_DECORATION)
    text = _TRAILING_BOLD.sub("", text) if len(text) > 1 else text
    return list(actions).index("*") if text.strip(_NO_STAR_DECORATION) == "*" else None


# ---------------------------------------------------------------- oracle


def raw_points_env(env: gymnasium.Env) -> PointsEnv:
    """The PointsEnv inside a (possibly wrapped) env; TypeError otherwise."""
    inner = env.unwrapped
    if not isinstance(inner, PointsEnv):
        raise TypeError(f"expected a PointsEnv, got {type(inner).__name__}")
    return inner


def plan_action(env: PointsEnv, plan: tuple[str, ...] | None, thought: str = "") -> OracleAction:
    """The oracle's action from a continuation `plan` of the formula: its first token, ``=`` when the plan
    is empty (the formula is finished) or None (nothing reaches the target from here). `thought`
    replaces the default reason."""
    if env.done:
        raise RuntimeError("the episode is over: the oracle has nothing to decide")
    finish = env.tokens.index("=")
    if plan is None:
        return OracleAction(finish, thought or f"No formula from here makes {env.target}, so finish.")
    if not plan:
        return OracleAction(finish, thought or f"{' '.join(env.formula)} = {env.target}, so finish.")
    full = " ".join([*env.formula, *plan])
    return OracleAction(env.tokens.index(plan[0]), thought or f"{full} = {env.target}, so write {plan[0]}.")


@lru_cache(maxsize=65536)
def points24_plan(
    numbers: tuple[int, ...], prefix: tuple[str, ...], target: int = 24, max_len: int = 20
) -> tuple[tuple[str, ...], bool] | None:
    """``(continuation, exact)``: how the Points24 oracle finishes the formula `prefix` of a deal.

    From the empty prefix: the first formula for the target (:func:`find_expression`, minimal brackets);
    for a deal without one, the formula whose value is closest to the target (:func:`closest_expression`,
    ties: the smaller value), with ``exact`` False. After a prefix that follows the previous plan, the rest
    of that plan (so the oracle writes one formula start to finish); after any other prefix,
    :func:`group_completion` (a solution consistent with the prefix), or None when there is none.
    LRU-cached.
    """
    numbers = tuple(sorted(numbers))
    if not prefix:
        solution = find_expression(numbers, Fraction(target))
        if solution is not None:
            return render(solution), True
        return render(closest_expression(numbers, target)), False
    parent = points24_plan(numbers, prefix[:-1], target, max_len)
    if parent is not None and parent[0][:1] == prefix[-1:]:
        return parent[0][1:], parent[1]
    found = group_completion(numbers, target, prefix, max_len=max_len)
    return None if found is None else (found, True)


def points24_oracle(env: gymnasium.Env) -> OracleAction:
    """Write a solution token by token, then ``=``; details in :func:`points24_plan`. Deals without a
    solution: write the formula closest to 24 (reward -1 either way, but the data shows a whole formula);
    a prefix that no longer leads to 24 (after a corrupted action): ``=`` at once."""
    inner = raw_points_env(env)
    planned = points24_plan(tuple(inner.numbers), tuple(inner.formula), inner.target, inner.max_formula_len)
    if planned is None:
        return plan_action(inner, None)
    plan, exact = planned
    if exact:
        return plan_action(inner, plan)
    full = [*inner.formula, *plan]
    closest = f"{' '.join(full)} = {_fraction_text(evaluate(full))}"
    return plan_action(inner, plan, f"No formula makes {inner.target}; the closest is {closest}.")


TASKS = {
    "Points24": TaskSpec(
        name="Points24",
        prompt=POINTS24_PROMPT,
        text_config=TextActionConfig(max_steps=POINTS24_MAX_STEPS),
        parser=parse_points_action,
        oracle=points24_oracle,
    )
}
"""This module's task (see :data:`vlmq_core.envs.CATALOG`)."""
