"""The best success rate any policy can reach on each Gym Cards task, computed exactly (METHOD.md "limit").

- NumberLine: 1. Start and target differ by at most 5 positions and an episode allows 10 steps.
- EZPoints: 1. Every deal has a solution by construction (redealt until solvable); 19/169 of raw draws are.
- Points24: the probability that a deal has a solution, summed over all 715 multisets of four numbers
  (1..10) weighted by their probability under the env's (and RL4VLM's) sampling: four independent ranks
  uniform in 1..13, J/Q/K = 10, i.e. P(10) = 4/13. No policy solves an unsolvable deal, and a solvable
  one can be written within the step limit. (Dealing from one shuffled 52-card deck instead,
  :func:`points24_solvable_share` with ``deck=True``, gives a slightly different number.)
- Blackjack: the win probability (episode reward +1 = success) of the return-optimal policy of
  :mod:`~vlmq_core.envs.blackjack`, by exact policy evaluation over (player sum, usable ace, dealer card)
  and all initial deals: 42.95%. Choice: the limit is this policy's win rate, as METHOD.md states; a policy
  that maximises the win rate itself (draws count as failures) reaches 43.16%
  (:func:`blackjack_max_win_rate`) by hitting more often.

Everything is exact (fractions) and cached; the Points24 enumeration takes well under a second.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from functools import cache
from itertools import combinations_with_replacement
from math import comb, factorial

from vlmq_core.envs.blackjack import _add, card_probabilities, hand_sum, optimal_action, stand_outcomes
from vlmq_core.envs.formula import solvable


@cache
def points24_solvable_share(target: int = 24, deck: bool = False) -> Fraction:
    """Probability that four cards (J/Q/K = 10) have a formula equal to `target`.

    ``deck=False``: independent ranks uniform in 1..13 (the env's infinite deck, as RL4VLM samples);
    ``deck=True``: four different cards of one 52-card deck.
    """
    probs = card_probabilities()
    share = Fraction(0)
    for numbers in combinations_with_replacement(range(1, 11), 4):
        if not solvable(numbers, target):
            continue
        counts = Counter(numbers)
        if deck:
            p = Fraction(1, comb(52, 4))
            for value, k in counts.items():
                p *= comb(16 if value == 10 else 4, k)
        else:
            p = Fraction(factorial(4))
            for value, k in counts.items():
                p *= probs[value] ** k / factorial(k)
        share += p
    return share


def ezpoints_raw_solvable_share() -> Fraction:
    """Probability that two independent infinite-deck cards sum or multiply to 12 (the redeal rate)."""
    probs = card_probabilities()
    return sum(
        (probs[a] * probs[b] for a in probs for b in probs if a + b == 12 or a * b == 12),
        start=Fraction(0),
    )


@cache
def _policy_outcomes(player: int, usable: bool, showing: int) -> tuple[Fraction, Fraction, Fraction]:
    """``(P(win), P(draw), P(loss))`` of the return-optimal policy from a player hand (sum <= 21)."""
    if optimal_action(player, usable, showing) == 0:
        return stand_outcomes(player, showing)
    win = draw = loss = Fraction(0)
    for card, p in card_probabilities().items():
        total, soft = _add(player, usable, card)
        if total > 21:
            loss += p
            continue
        w, d, lo = _policy_outcomes(total, soft, showing)
        win, draw, loss = win + p * w, draw + p * d, loss + p * lo
    return win, draw, loss


@cache
def blackjack_outcomes() -> dict[str, Fraction]:
    """Exact ``{"win", "draw", "loss", "return"}`` probabilities / expected return of the return-optimal
    policy, over all initial deals (two player cards, the dealer's face-up card; all independent)."""
    probs = card_probabilities()
    win = draw = loss = Fraction(0)
    for showing, p_dealer in probs.items():
        for a, pa in probs.items():
            for b, pb in probs.items():
                w, d, lo = _policy_outcomes(*hand_sum([a, b]), showing)
                p = p_dealer * pa * pb
                win, draw, loss = win + p * w, draw + p * d, loss + p * lo
    return {"win": win, "draw": draw, "loss": loss, "return": win - loss}


@cache
def _max_win(player: int, usable: bool, showing: int) -> Fraction:
    """Highest win probability of any policy from a player hand (sum <= 21)."""
    hit = Fraction(0)
    for card, p in card_probabilities().items():
        total, soft = _add(player, usable, card)
        if total <= 21:
            hit += p * _max_win(total, soft, showing)
    return max(stand_outcomes(player, showing)[0], hit)


@cache
def blackjack_max_win_rate() -> Fraction:
    """The highest win probability of any hit/stand policy (draws count as failures), for comparison with
    the return-optimal policy's win rate in :func:`task_limits`."""
    probs = card_probabilities()
    return sum(
        (
            pd * pa * pb * _max_win(*hand_sum([a, b]), d)
            for d, pd in probs.items()
            for a, pa in probs.items()
            for b, pb in probs.items()
        ),
        start=Fraction(0),
    )


@cache
def task_limits() -> dict[str, float]:
    """Best achievable success rate per task short name (see the module docstring for each)."""
    return {
        "NumberLine": 1.0,
        "EZPoints": 1.0,
        "Points24": float(points24_solvable_share()),
        "Blackjack": float(blackjack_outcomes()["win"]),
    }
