"""How many updates does the critic's head need to read Blackjack's hand from noisy outcomes? (fixed features)

The hidden states of a checkpoint at the decision position of ``[action] stand`` on the first hands of `--hands`
seeds (as the critic sees them: through the run's input whitening), and what standing actually returned there
(+1 / 0 / -1). A fresh critic head of the run's shape (d -> 400 -> 1, output started at -1, PopArt's initial
sigma 10, Adam at the run's critic learning rate, 8 hands per update) regresses the outcome; after each number of
updates, on held-out hands, the correlation of its prediction with the exact Q*(stand) (``envs/blackjack``). The
same head regressed on Q*(stand) itself shows what the noise of one outcome per hand costs. Features stay fixed
(in a run, the backbone moves too), so this is the head's part of the problem only (docs/FINDINGS.md, 15). Run:
``python scripts/diagnostics/blackjack_critic_samples.py runs/f15/tau05/checkpoint [--hands 2000]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from blackjack_hands import decision_states, first_hands, hand_turn

from vlmq_core.critic import CriticHead, init_constant
from vlmq_core.envs import make_env
from vlmq_core.envs.blackjack import action_values
from vlmq_core.model import load_checkpoint

SIGMA = 10.0  # PopArt's initial sigma (popart_init_nu 100), which barely moves in a CPU run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--hands", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=40_000)
    ap.add_argument("--lr", type=float, default=6e-4)
    args = ap.parse_args()
    policy = load_checkpoint(args.checkpoint)
    policy.eval()
    env = make_env("Blackjack")
    turns, outcome, exact = [], [], []
    for s, prompt, st in first_hands(args.seed, args.hands, env):
        exact.append(float(action_values(st["player_sum"], st["usable_ace"], st["dealer_showing"])[0]))
        turns.append(hand_turn(s, prompt, "stand"))
        env.reset(seed=s)
        outcome.append(float(env.step("[action] stand")[1]))
    with torch.no_grad():
        x = policy.whiten(decision_states(policy, turns, chunk=32))
    torch.set_num_threads(1)  # a 400-wide head: thread hand-offs would cost more than the arithmetic
    y_noisy, y_exact = torch.tensor(outcome), torch.tensor(exact)
    n = int(0.7 * len(x))
    print(f"{len(x)} hands ({n} to train on), outcome of standing: mean {y_noisy.mean():+.3f}, "
          f"its correlation with Q*(stand) {np.corrcoef(outcome, exact)[0, 1]:.3f}")  # fmt: skip
    checkpoints = [100, 200, 400, 800, 1600, 3200]
    for name, y in (("one outcome per hand", y_noisy), ("Q*(stand) itself", y_exact)):
        torch.manual_seed(0)
        head = CriticHead(x.shape[1], 1)
        init_constant(head, -1.0 / SIGMA)
        opt = torch.optim.Adam(head.parameters(), lr=args.lr)
        gen = torch.Generator().manual_seed(0)
        row = []
        for step in range(1, checkpoints[-1] + 1):
            idx = torch.randint(0, n, (8,), generator=gen)
            loss = ((head(x[idx]).squeeze(-1) - y[idx] / SIGMA) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in checkpoints:
                with torch.no_grad():
                    pred = head(x[n:]).squeeze(-1) * SIGMA
                corr = np.corrcoef(pred.numpy(), y_exact[n:].numpy())[0, 1]
                row.append(f"{step}: {corr:.2f} (mean {pred.mean():+.2f})")
        print(f"{name:>21}, updates: corr with Q*(stand) on held-out hands: " + ", ".join(row))


if __name__ == "__main__":
    main()
