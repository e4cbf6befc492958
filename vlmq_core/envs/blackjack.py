"""Blackjack (RL4VLM gym_cards): gymnasium's Blackjack-v1 rules with real cards drawn in the picture.

Rules (gymnasium ``Blackjack-v1`` with ``natural=False, sab=False``): infinite deck (rank uniform in 1..13,
J/Q/K count 10, an ace counts 11 while that does not bust the hand: a "usable" or soft ace). The dealer gets
two cards, one face up and one face down (the hole card), the player two face-up cards. Action 0 (`stand`)
ends the player's turn: the dealer reveals the hole card and draws while the dealer's sum (soft aces
counted as 11) is below 17, so the dealer stands on soft 17. Then +1 if the player's sum beats the dealer's
or the dealer busts, 0 on equal sums, -1 otherwise. Action 1 (`hit`) draws a card: -1 and the episode
ends when the player's sum exceeds 21, else 0. A two-card 21 gets no bonus.

The oracle is the return-optimal hit/stand policy, computed exactly by dynamic programming over
(player sum, usable ace, dealer's face-up card) with :class:`fractions.Fraction` probabilities.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from PIL import ImageDraw

from vlmq_core.envs import cards as C
from vlmq_core.envs.spec import OracleAction, TaskSpec
from vlmq_core.envs.text_action import ACTION_TAG, TaskPrompt

BLACKJACK_PROMPT = TaskPrompt(
    description="You play Blackjack. Get closer to 21 than the dealer without going over. "
    "An ace counts 1 or 11; J, Q, K count 10. The dealer draws until 17 or more.",
    actions=["stand", "hit"],
    action_doc="stand : keep your cards, the dealer plays\nhit : take one more card",
    example=f"{ACTION_TAG} hit",
)
"""The Blackjack prompt (actions in gymnasium's order: 0 = stand, 1 = hit)."""
STAND, HIT = 0, 1

_CARD_W, _CARD_H = 62, 88
_DEALER_Y, _PLAYER_Y = 34, 176


def hand_sum(values: list[int]) -> tuple[int, bool]:
    """``(sum, usable_ace)`` of card values (ace = 1): one ace counts 11 when the sum stays <= 21."""
    total = sum(values)
    usable = 1 in values and total + 10 <= 21
    return (total + 10 if usable else total), usable


class BlackjackEnv(gymnasium.Env):
    """Blackjack with a 300x300 RGB picture: dealer's cards on top (hole card face down until the end),
    the player's below, sums written next to them.

    Actions: 0 = stand, 1 = hit. Rewards and termination: see the module docstring; never truncated.
    `info` (also on reset) is :meth:`state`.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = "rgb_array"):
        """Build the env; `render_mode` may only be "rgb_array" (or None, same behaviour)."""
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, 255, (C.IMAGE_SIZE, C.IMAGE_SIZE, 3), dtype=np.uint8)
        self.dealer: list[C.Card] = []
        self.player: list[C.Card] = []
        self.done = False
        self.reward = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Deal two cards to the dealer (the first face up), then two to the player."""
        super().reset(seed=seed)
        self.dealer = [C.draw_card(self.np_random) for _ in range(2)]
        self.player = [C.draw_card(self.np_random) for _ in range(2)]
        self.done = False
        self.reward = 0.0
        return self.render(), self.state()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Stand (0) or hit (1); see the class docstring."""
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}; expected 0 (stand) or 1 (hit)")
        if self.done:
            raise RuntimeError("the hand is over: call reset()")
        if int(action) == HIT:
            self.player.append(C.draw_card(self.np_random))
            self.done = self.player_sum > 21
            self.reward = -1.0 if self.done else 0.0
        else:
            while hand_sum([c.value for c in self.dealer])[0] < 17:
                self.dealer.append(C.draw_card(self.np_random))
            player, dealer = self.player_sum, self.dealer_sum
            self.reward = 1.0 if dealer > 21 or player > dealer else (0.0 if player == dealer else -1.0)
            self.done = True
        return self.render(), self.reward, self.done, False, self.state()

    @property
    def player_sum(self) -> int:
        """The player's best sum (a usable ace counts 11)."""
        return hand_sum([c.value for c in self.player])[0]

    @property
    def usable_ace(self) -> bool:
        """Whether the player holds an ace counted as 11."""
        return hand_sum([c.value for c in self.player])[1]

    @property
    def dealer_sum(self) -> int:
        """The dealer's sum including the hole card."""
        return hand_sum([c.value for c in self.dealer])[0]

    def outcome(self) -> str | None:
        """``"win"``, ``"draw"`` or ``"loss"`` once the hand is over, else None."""
        if not self.done:
            return None
        return {1.0: "win", 0.0: "draw", -1.0: "loss"}[self.reward]

    def state(self) -> dict[str, Any]:
        """The state as plain Python values (card codes like ``"QS"``; the dealer's hole card included)."""
        return {
            "player_cards": [c.code for c in self.player],
            "dealer_cards": [c.code for c in self.dealer],
            "player_sum": self.player_sum,
            "usable_ace": self.usable_ace,
            "dealer_showing": self.dealer[0].value if self.dealer else 0,
            "dealer_sum": self.dealer_sum,
            "done": self.done,
            "outcome": self.outcome(),
        }

    def text(self) -> str:
        """The state as text, e.g. ``"Dealer shows Q. Your cards: A, 5 (soft 16)."``; after the hand it
        shows the dealer's full hand and the result."""
        player = f"Your cards: {_names(self.player)} ({_sum_text(self.player)})."
        if not self.done:
            return f"Dealer shows {self.dealer[0].label}. {player}"
        result = {"win": "You win.", "draw": "Draw.", "loss": "You lose."}[self.outcome()]
        return f"Dealer has {_names(self.dealer)} ({_sum_text(self.dealer)}). {player} {result}"

    def render(self) -> np.ndarray:
        """The current picture as a (300, 300, 3) uint8 array."""
        image = C.table()
        draw = ImageDraw.Draw(image)
        label_font = C.font(18)
        dealer_label = f"Dealer: {_sum_text(self.dealer)}" if self.done else "Dealer"
        draw.text((10, 8), dealer_label, fill=C.TEXT_COLOUR, font=label_font)
        dealer = [C.card_face(c, _CARD_W, _CARD_H) for c in self.dealer]
        if not self.done:
            dealer = [dealer[0], C.card_back(_CARD_W, _CARD_H)]
        C.paste_row(image, dealer, 10, _DEALER_Y, C.IMAGE_SIZE - 20)
        draw.text((10, _PLAYER_Y - 26), f"Player: {_sum_text(self.player)}", fill=C.TEXT_COLOUR, font=label_font)
        C.paste_row(image, [C.card_face(c, _CARD_W, _CARD_H) for c in self.player], 10, _PLAYER_Y, C.IMAGE_SIZE - 20)
        if self.done:
            result = {"win": "You win", "draw": "Draw", "loss": "You lose"}[self.outcome()]
            draw.text((C.IMAGE_SIZE // 2, 284), result, fill=(255, 230, 90), font=C.font(20), anchor="mm")
        return C.to_array(image)


def _names(cards: list[C.Card]) -> str:
    return ", ".join(c.label for c in cards)


def _sum_text(cards: list[C.Card]) -> str:
    """``"16"``, ``"soft 16"`` or ``"25, bust"``."""
    total, usable = hand_sum([c.value for c in cards])
    if total > 21:
        return f"{total}, bust"
    return f"soft {total}" if usable else str(total)


# ---------------------------------------------------------------- exact dynamic programming


def card_probabilities() -> dict[int, Fraction]:
    """Probability of each card value in the infinite deck: 1/13 for 1..9, 4/13 for 10."""
    return {v: Fraction(4 if v == 10 else 1, 13) for v in range(1, 11)}


def _add(total: int, usable: bool, card: int) -> tuple[int, bool]:
    """The hand ``(sum, usable_ace)`` after drawing `card` (sum > 21: bust).

    ``(sum, usable)`` is a sufficient state: a hand with an ace that is not usable has a hard sum >= 12,
    so no later card makes an ace usable again; otherwise a drawn ace is usable iff hard + 11 <= 21.
    """
    hard = (total - 10 if usable else total) + card
    has_ace = usable or card == 1
    if has_ace and hard + 10 <= 21:
        return hard + 10, True
    return hard, False


@cache
def _dealer_final(total: int, usable: bool) -> dict[int, Fraction]:
    """Distribution of the dealer's final sum (22 stands for every bust) from a hand ``(sum, usable)``."""
    if total > 21:
        return {22: Fraction(1)}
    if total >= 17:
        return {total: Fraction(1)}
    out: dict[int, Fraction] = {}
    for card, p in card_probabilities().items():
        for final, q in _dealer_final(*_add(total, usable, card)).items():
            out[final] = out.get(final, Fraction(0)) + p * q
    return out


@cache
def dealer_final_distribution(showing: int) -> dict[int, Fraction]:
    """Distribution of the dealer's final sum (17..21, 22 = bust) given the face-up card's value (1..10).

    The hole card is independent of the player's actions, so drawing it at reveal time is equivalent.
    """
    if not 1 <= showing <= 10:
        raise ValueError(f"dealer card value must be in 1..10, got {showing}")
    return _dealer_final(*hand_sum([showing]))


def stand_outcomes(player: int, showing: int) -> tuple[Fraction, Fraction, Fraction]:
    """``(P(win), P(draw), P(loss))`` when standing on `player` (<= 21) against the dealer's `showing`."""
    win = draw = loss = Fraction(0)
    for final, p in dealer_final_distribution(showing).items():
        if final > 21 or player > final:
            win += p
        elif player == final:
            draw += p
        else:
            loss += p
    return win, draw, loss


@cache
def action_values(player: int, usable: bool, showing: int) -> tuple[Fraction, Fraction]:
    """Exact expected returns ``(Q(stand), Q(hit))`` of the optimal policy from player sum `player`
    (<= 21), `usable` ace and dealer's face-up value `showing` (1..10)."""
    if player > 21:
        raise ValueError(f"player sum {player} is already bust")
    win, _, loss = stand_outcomes(player, showing)
    hit = Fraction(0)
    for card, p in card_probabilities().items():
        total, soft = _add(player, usable, card)
        hit += p * (-1 if total > 21 else max(action_values(total, soft, showing)))
    return win - loss, hit


def optimal_action(player: int, usable: bool, showing: int) -> int:
    """The return-optimal action (1 = hit iff its expected return is strictly larger, else 0 = stand)."""
    stand, hit = action_values(player, usable, showing)
    return HIT if hit > stand else STAND


# ---------------------------------------------------------------- task registration


def _raw(env: gymnasium.Env) -> BlackjackEnv:
    inner = env.unwrapped
    if not isinstance(inner, BlackjackEnv):
        raise TypeError(f"expected a BlackjackEnv, got {type(inner).__name__}")
    return inner


def blackjack_oracle(env: gymnasium.Env) -> OracleAction:
    """The return-optimal action for the current hand (DP over sum, usable ace, dealer's card)."""
    inner = _raw(env)
    if inner.done:
        raise RuntimeError("the hand is over: the oracle has nothing to decide")
    player, usable, showing = inner.player_sum, inner.usable_ace, inner.dealer[0].value
    stand, hit = action_values(player, usable, showing)
    action = optimal_action(player, usable, showing)
    hand = f"soft {player}" if usable else str(player)
    name, best, other = ("hit", hit, stand) if action == HIT else ("stand", stand, hit)
    other_name = "stand" if action == HIT else "hit"
    thought = (
        f"{hand} against the dealer's {inner.dealer[0].label}: {name} expects {float(best):+.2f}, "
        f"{other_name} {float(other):+.2f}."
    )
    return OracleAction(action, thought)


TASKS = {"Blackjack": TaskSpec(name="Blackjack", prompt=BLACKJACK_PROMPT, oracle=blackjack_oracle)}
"""This module's task (see :data:`vlmq_core.envs.CATALOG`)."""
