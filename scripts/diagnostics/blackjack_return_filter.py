"""What a filter on the episode's return keeps in a Blackjack dataset, by hand, and what that policy is worth.

Over the dataset's valid turns, the moves of hands that ended won or drawn (what ``return >= b`` keeps for any
flat baseline ``-1 < b <= 0``): per group of player hands (the groups of ``blackjack_probe.py``), the share of hits
among the kept moves. Then the exact win rate (``envs/limits.py``'s recursion over the infinite deck) of playing
that share greedily, of always standing and of the return-optimal policy (docs/FINDINGS.md, 16). Run:
``python scripts/diagnostics/blackjack_return_filter.py runs/blackjack/data`` (seconds).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from fractions import Fraction
from functools import cache

from vlmq_core.buffer import TurnBuffer
from vlmq_core.envs.blackjack import _add, card_probabilities, hand_sum, optimal_action, stand_outcomes
from vlmq_core.envs.text_action import parse_action


def group(total: int, soft: bool) -> str:
    return ("soft " if soft else "") + ("<=11" if total <= 11 else "12-16" if total <= 16 else "17+")


def win_rate(hits) -> float:
    """Exact win probability of the policy ``hits(total, soft, showing) -> bool`` over all initial deals."""
    probs = card_probabilities()

    @cache
    def win(total: int, soft: bool, showing: int) -> Fraction:
        if not hits(total, soft, showing):
            return stand_outcomes(total, showing)[0]
        after = ((p, _add(total, soft, card)) for card, p in probs.items())
        return sum((p * win(t, s, showing) for p, (t, s) in after if t <= 21), start=Fraction(0))

    deals = (
        (pd * pa * pb, hand_sum([a, b]), d)
        for d, pd in probs.items()
        for a, pa in probs.items()
        for b, pb in probs.items()
    )
    return float(sum((p * win(*hand, d) for p, hand, d in deals), start=Fraction(0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a Blackjack dataset folder (TurnBuffer)")
    args = ap.parse_args()
    episodes = TurnBuffer(args.data).episodes()
    moves = defaultdict(lambda: {"hit": [0, 0], "stand": [0, 0]})  # [kept, all] per (group, optimal move)
    for turns in episodes.values():
        won_or_drew = sum(t.reward for t in turns) >= 0
        for turn in turns:
            if not turn.valid:
                continue
            state = json.loads(turn.info)
            total, soft, showing = state["player_sum"], state["usable_ace"], state["dealer_showing"]
            best = ("stand", "hit")[optimal_action(total, soft, showing)]
            move = ("stand", "hit")[parse_action(turn.reply, ["stand", "hit"])]
            counts = moves[(group(total, soft), best)][move]
            counts[0] += won_or_drew
            counts[1] += 1
    print("player total  optimal  hits kept/all  stands kept/all  hit share of kept")
    share = {}
    for (g, best), c in sorted(moves.items()):
        kept = c["hit"][0] + c["stand"][0]
        share[g] = share.get(g, []) + [(c["hit"][0], kept)]
        print(
            f"{g:>12} {best:>8} {c['hit'][0]:>6}/{c['hit'][1]:<6} {c['stand'][0]:>8}/{c['stand'][1]:<6} "
            f"{c['hit'][0] / max(kept, 1):.2f}"
        )
    greedy = {g: sum(h for h, _ in v) > sum(k for _, k in v) / 2 for g, v in share.items()}  # hit where most kept hit
    print("greedy on the kept moves hits at:", sorted(g for g, h in greedy.items() if h))
    print(
        f"win rate: greedy {win_rate(lambda t, s, d: greedy.get(group(t, s), False)):.4f}, "
        f"always stand {win_rate(lambda t, s, d: False):.4f}, "
        f"optimal {win_rate(lambda t, s, d: optimal_action(t, s, d) == 1):.4f}"
    )


if __name__ == "__main__":
    main()
