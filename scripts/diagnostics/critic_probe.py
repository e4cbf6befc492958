"""Diagnostic (docs/FINDINGS.md, findings 2-3): is "this move was good" in the hidden states, and how fast does
a critic MLP learn it?

Random-action turns only. Linear probes (ridge, closed form, held-out third): at the position predicting
``+``/``-`` ("target above current") and at the stop-token position ("turn reward >= 0"). Then the critic's
MLP shape (d -> 400 -> 1, Adam, lr 6e-4, 8 turns per step) regressed directly on r/10 at the stop-token
position, with inputs raw, standardised per feature, and ZCA-whitened (``InputWhitening``), statistics
always over all reply positions of the dataset; prints held-out AUC.

    python scripts/diagnostics/critic_probe.py /tmp/features.pt
"""

import re
import sys

import numpy as np
import torch

from vlmq_core.critic import CriticHead, InputWhitening

rows = torch.load(sys.argv[1], weights_only=False)
rand = [r for r in rows if r["strategy"] == "random"]
n = len(rand) * 2 // 3


def probe(x: np.ndarray, y: np.ndarray, lam: float = 10.0) -> float:
    xs = (x - x[:n].mean(0)) / (x[:n].std(0) + 1e-6)
    xb = np.c_[xs, np.ones(len(x))]
    w = np.linalg.solve(xb[:n].T @ xb[:n] + lam * np.eye(xb.shape[1]), xb[:n].T @ (y[:n] * 2 - 1.0))
    return float(((xb[n:] @ w > 0) == y[n:]).mean())


states = [tuple(map(int, re.search(r"Target: (\d)\. Current: (\d)", r["obs"]).groups())) for r in rand]
above = np.array([t > c for t, c in states])
good = np.array([r["r"] >= 0 for r in rand])
print("probe: target above current, at the +/- position:", probe(np.stack([r["h"][-2].numpy() for r in rand]), above))
print("probe: move was good, at the stop-token position:", probe(np.stack([r["h"][-1].numpy() for r in rand]), good))

every = torch.cat([r["h"] for r in rows])
stop = torch.stack([r["h"][-1] for r in rand])
standardised = (stop - every.mean(0)) / (every.std(0) + 1e-6)
print("spread of stop-token states / spread over all reply positions:", round(standardised[:n].std(0).mean().item(), 3))
whiten = InputWhitening(every.shape[1])
whiten.observe(every, exact=True)
whiten.refresh([], eps=0.01)
target = torch.tensor([r["r"] for r in rand]) / 10


def regress(x: torch.Tensor, name: str) -> None:
    torch.manual_seed(0)
    net = CriticHead(x.shape[1], 1, hidden=400)  # the critic's MLP, with one output
    opt = torch.optim.AdamW(net.parameters(), lr=6e-4, weight_decay=0)
    rng = np.random.default_rng(0)
    aucs = []
    for step in range(1, 1001):
        i = rng.choice(n, 8, replace=False)
        loss = ((net(x[i]).squeeze(1) - target[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (100, 300, 1000):
            with torch.no_grad():
                q = net(x[n:]).squeeze(1).numpy()
            y = good[n:]
            aucs.append(f"{step} steps {(q[y][:, None] > q[~y][None, :]).mean():.3f}")
    print(f"critic MLP, direct regression, {name} inputs: held-out AUC after", ", ".join(aucs))


regress(stop, "raw")
regress(standardised, "per-feature standardised")
regress(whiten(stop), "ZCA-whitened")
