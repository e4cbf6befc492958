"""Does a checkpoint's hidden state at Blackjack's decision position encode the hand's value? (a linear probe)

For the first hand of `--hands` seeds, the hidden state that predicts the action token of ``[action] stand`` (as
the critic sees it: raw, and through the run's input whitening), and the exact ``Q*(stand) - Q*(hit)`` of the
return-optimal policy (``envs/blackjack.action_values``). A ridge regression fitted on 70% of the hands predicts
the other 30%: its R^2 and how often it picks the optimal action's sign say whether the *features* hold what the
critic needs (docs/FINDINGS.md, 15). Run:
``python scripts/diagnostics/blackjack_linear_probe.py runs/blackjack/online/checkpoint [--hands 800]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from blackjack_hands import decision_states, first_hands, hand_turn

from vlmq_core.envs.blackjack import action_values
from vlmq_core.model import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--hands", type=int, default=800)
    ap.add_argument("--seed", type=int, default=30_000)
    args = ap.parse_args()
    policy = load_checkpoint(args.checkpoint)
    policy.eval()
    hands = first_hands(args.seed, args.hands)
    turns = [hand_turn(s, prompt, "stand") for s, prompt, _ in hands]
    gaps = []
    for _, _, st in hands:
        stand, hit = action_values(st["player_sum"], st["usable_ace"], st["dealer_showing"])
        gaps.append(float(stand - hit))
    raw = decision_states(policy, turns, chunk=16)
    with torch.no_grad():
        white = policy.whiten(raw)
    y = np.array(gaps)
    n, tr = len(y), int(0.7 * len(y))
    print(f"{n} hands; optimal action is stand in {(y[tr:] > 0).mean():.1%} of the {n - tr} test hands")
    for name, feats in (("raw", raw), ("whitened", white)):
        x = feats.double().numpy()
        x = (x - x[:tr].mean(0)) / (x[:tr].std(0) + 1e-6)
        for lam in (1.0, 10.0, 100.0):
            w = np.linalg.solve(x[:tr].T @ x[:tr] + lam * np.eye(x.shape[1]), x[:tr].T @ (y[:tr] - y[:tr].mean()))
            pred = x[tr:] @ w + y[:tr].mean()
            r2 = 1 - ((pred - y[tr:]) ** 2).mean() / y[tr:].var()
            acc = ((pred > 0) == (y[tr:] > 0)).mean()
            print(f"{name:>9} ridge {lam:>5g}: test R^2 {r2:.3f}, optimal action picked {acc:.1%}")


if __name__ == "__main__":
    main()
