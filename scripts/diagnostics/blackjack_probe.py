"""Q(hit) - Q(stand) of a Blackjack checkpoint's critic at the decision token, by the player's hand (a probe).

For the first hand of each held-out seed, the critic's unnormalised Q of the reply tokens `[action] hit` and
`[action] stand` at the first token where they differ, and the policy's probability of `hit` there; grouped by
the player's total and whether the return-optimal policy hits (``envs/limits.py``). Run:
``python scripts/diagnostics/blackjack_probe.py runs/blackjack/online/checkpoint [--seeds 300] [--seed 20000]``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from blackjack_hands import first_hands, hand_turn

from vlmq_core.envs.blackjack import optimal_action
from vlmq_core.inspector import token_views
from vlmq_core.model import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20_000)
    args = ap.parse_args()
    policy = load_checkpoint(args.checkpoint)
    rows = defaultdict(list)
    turns, labels = [], []
    for s, prompt, st in first_hands(args.seed, args.seeds):
        turns += [hand_turn(s, prompt, "hit"), hand_turn(s, prompt, "stand")]
        best = ("stand", "hit")[optimal_action(st["player_sum"], st["usable_ace"], st["dealer_showing"])]
        labels.append((st["player_sum"], st["usable_ace"], best))
    views = []
    for i in range(0, len(turns), 16):
        views += token_views(policy, [(t, None) for t in turns[i : i + 16]])
    for k, (total, soft, best) in enumerate(labels):
        hit, stand = views[2 * k], views[2 * k + 1]
        j = next(j for j, (a, b) in enumerate(zip(hit.tokens, stand.tokens, strict=False)) if a != b)
        group = ("soft " if soft else "") + ("<=11" if total <= 11 else ("12-16" if total <= 16 else "17+"))
        rows[(group, best)].append((hit.q_taken[j] - stand.q_taken[j], float(np.exp(hit.logp[j]))))
    print(f"{'player total':>12} {'optimal':>8} {'hands':>6} {'Q(hit)-Q(stand)':>16} {'pi(hit)':>8}")
    for (group, best), vals in sorted(rows.items()):
        d = np.array(vals)
        print(
            f"{group:>12} {best:>8} {len(d):>6} {d[:, 0].mean():>+10.3f} (SE {d[:, 0].std() / len(d) ** 0.5:.3f}) "
            f"{d[:, 1].mean():>8.3f}"
        )


if __name__ == "__main__":
    main()
