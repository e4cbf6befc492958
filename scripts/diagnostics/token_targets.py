"""What a checkpoint's critic says token by token on a dataset's turns: Q, V_bar and the TD target, grouped.

For `--turns` random turns of a run's dataset (``TurnBuffer``), the token views of ``inspector.token_views`` with
the ``td`` advantage and n-step targets (`--td-steps`, the CPU configs' 32), averaged per group of (strategy,
action or INVALID, whether the episode goes on): Q and V_bar at the reply's first token and its target y, Q and y
at the action token, the turn's reward and the filter's kept fraction at beta 0. Then the first turns token by
token (docs/FINDINGS.md, 15). Run:
``python scripts/diagnostics/token_targets.py runs/f15/tau05/checkpoint runs/blackjack/data [--turns 400]``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from vlmq_core.buffer import TurnBuffer
from vlmq_core.inspector import token_views
from vlmq_core.losses import LossConfig
from vlmq_core.model import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("--turns", type=int, default=400)
    ap.add_argument("--td-steps", type=int, default=32)
    ap.add_argument("--show", type=int, default=6, help="turns printed token by token")
    args = ap.parse_args()
    policy = load_checkpoint(args.checkpoint)
    pairs = TurnBuffer(args.data).transitions()
    loss = LossConfig(advantage="td", td_steps=args.td_steps)
    idx = np.random.default_rng(0).choice(len(pairs), min(args.turns, len(pairs)), replace=False)
    chosen = [pairs[i] for i in idx]
    views = []
    for i in range(0, len(chosen), 16):
        views += token_views(policy, chosen[i : i + 16], loss=loss)
    groups = defaultdict(list)
    for (turn, nxt), v in zip(chosen, views, strict=True):
        key = (turn.strategy, turn.reply.split()[-1] if turn.valid else "INVALID", "ends" if nxt is None else "goes on")
        act = len(v.q_taken) - 2  # the action token; the stop token is last
        q_act, y_act = (v.q_taken[act], v.td_target[act]) if act >= 0 else (np.nan, np.nan)
        groups[key].append((v.q_taken[0], v.value[0], v.td_target[0], q_act, y_act, turn.reward, np.mean(v.kept)))
    print("strategy, action, episode: n | Q[0] | V_bar[0] | y[0] | Q[action] | y[action] | reward | kept")
    for key, rows in sorted(groups.items()):
        print(key, len(rows), " | ".join(f"{x:+.2f}" for x in np.nanmean(np.array(rows), 0)))
    for (turn, nxt), v in list(zip(chosen, views, strict=True))[: args.show]:
        print(repr(turn.reply), turn.reward, "ends" if nxt is None else "goes on")
        for tok, q, val, y, k in zip(v.tokens, v.q_taken, v.value, v.td_target, v.kept, strict=True):
            print(f"   {tok!r:>12} Q {q:+.2f} V_bar {val:+.2f} y {y:+.2f} kept {k}")


if __name__ == "__main__":
    main()
