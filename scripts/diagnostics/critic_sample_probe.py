"""Diagnostic (README finding 7): how many samples does the critic head need to order Q(h, +) and Q(h, -) per state?

Head only, on hidden states cached by ``cache_features.py`` (whitened over all reply positions, as
``CriticConfig.whiten``). Every reply token of a turn is regressed on the turn's reward (minus 3, near the
data's mean return): fixed, noise-free targets whose right answer at the decision token is known, ``r = 0``
or ``+1`` for the right move and ``-1`` for the wrong one in every state. The critic's shape and init are
notebook 03's (``d -> 400 -> |V|``, output weights zero, bias at -14 in PopArt units with sigma 10); only the
taken tokens' rows are computed. Prints, every 25 steps, the fraction of the 30 states in which
``Q(h, right) > Q(h, wrong)`` at the decision position, for:

- ``decision only``: the loss on the decision tokens alone;
- ``all positions``: the loss on every reply token, as in training (formatting and stop tokens share the head);
- ``all positions, 32 turns, lr 2e-3``: four times the turns per step and a larger step.

    python scripts/diagnostics/cache_features.py runs/03_offline_afsft /tmp/base.pt base
    python scripts/diagnostics/critic_sample_probe.py /tmp/base.pt      # ~3 min on 2 CPU cores
"""

import re
import sys

import numpy as np
import torch

from vlmq_core.critic import InputWhitening

rows = torch.load(sys.argv[1], weights_only=False)
H = torch.cat([r["h"] for r in rows])
whiten = InputWhitening(H.shape[1], eps=0.01)
whiten.observe(H, exact=True)
whiten.refresh([])
X = whiten(H)
tokens = torch.cat([r["tok"] for r in rows])
turn = torch.cat([torch.full((len(r["tok"]),), i) for i, r in enumerate(rows)])
target = torch.cat([torch.full((len(r["tok"]),), r["r"] - 3.0) for r in rows]) / 10.0  # PopArt sigma 10
decision = torch.cat(
    [(torch.arange(len(r["tok"])) == len(r["tok"]) - 2) & (r["strategy"] == "random") for r in rows]
)  # the position predicting the action token of a random valid reply "[action] +/-"

rand = [r for r in rows if r["strategy"] == "random"]
state = [tuple(map(int, re.search(r"Target: (\d)\. Current: (\d)", r["obs"]).groups())) for r in rand]
plus = next(int(r["tok"][-2]) for r, (t, c) in zip(rand, state, strict=True) if r["r"] >= 0 and t > c)
minus = next(int(r["tok"][-2]) for r in rand if int(r["tok"][-2]) != plus)
states = sorted(set(state))
XS = whiten(torch.stack([rand[state.index(s)]["h"][-2] for s in states]))
up = torch.tensor([t > c for t, c in states])
right, wrong = torch.where(up, plus, minus), torch.where(up, minus, plus)


def run(name: str, only_decision: bool = False, turns: int = 8, lr: float = 6e-4, steps: int = 300) -> None:
    torch.manual_seed(0)
    first, last = torch.nn.Linear(X.shape[1], 400), torch.nn.Linear(400, int(tokens.max()) + 1)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1.4)
    opt = torch.optim.AdamW([*first.parameters(), *last.parameters()], lr=lr, weight_decay=0)
    rng = np.random.default_rng(0)

    def q(x, tok):
        return (torch.relu(first(x)) * last.weight[tok]).sum(-1) + last.bias[tok]

    order = []
    for step in range(1, steps + 1):
        rows_ = torch.isin(turn, torch.tensor(rng.choice(len(rows), turns, replace=False)))
        if only_decision:
            rows_ &= decision
        loss = ((q(X[rows_], tokens[rows_]) - target[rows_]) ** 2).mean()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            with torch.no_grad():
                order.append(f"{(q(XS, right) > q(XS, wrong)).float().mean().item():.2f}")
    print(f"{name:36s}", " ".join(order), flush=True)


print("states ordered right, every 25 steps:")
run("decision only, 8 turns, lr 6e-4", only_decision=True)
run("all positions, 8 turns, lr 6e-4")
run("all positions, 32 turns, lr 2e-3", turns=32, lr=2e-3)
