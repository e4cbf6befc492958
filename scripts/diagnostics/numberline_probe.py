"""Diagnostic: what a policy and its critic decide in every NumberLine state, without playing episodes.

For each of the 30 states with target != current, the dataset's prompt is rewritten to that observation and
both replies ``[action] +`` / ``[action] -`` are scored (``vlmq_core.inspect.token_views``, terminal turns).
At the action token it reports, averaged over states:

- ``p_correct``: pi(right move) / (pi(+) + pi(-)); ``greedy``: fraction of states where the right move is likelier;
- ``critic_order``: fraction of states where Q(h, right move) > Q(h, wrong move) (0.5 exactly when one action
  token is preferred everywhere: no per-state signal);
- ``qgap``: mean unnormalised Q(h, right) - Q(h, wrong); ``mass_pm``: pi(+) + pi(-).

Noise-free, unlike a 20-30 episode evaluation (one standard error ~10 points). Used by ``afsft_variant.py``.
"""

from __future__ import annotations

import math

import torch

from vlmq_core.inspect import token_views
from vlmq_core.model import Policy
from vlmq_core.turns import Turn


def states() -> list[tuple[int, int]]:
    return [(t, c) for t in range(6) for c in range(6) if t != c]


def prompt_for(base_prompt: str, target: int, current: int) -> str:
    head = base_prompt.rsplit("Observation:", 1)[0]
    return head + f"Observation: Target: {target}. Current: {current}."


@torch.no_grad()
def decision(policy: Policy, base_prompt: str) -> dict[str, float]:
    """The probe's averages (see the module docstring) under ``probe/`` keys."""
    trans = [
        (Turn("probe", 0, "NumberLine", prompt_for(base_prompt, t, c), None, f"[action] {a}", 0.0, True), None)
        for t, c in states()
        for a in "+-"
    ]
    views = [v for i in range(0, len(trans), 20) for v in token_views(policy, trans[i : i + 20])]
    out = dict.fromkeys(("p_correct", "greedy", "critic_order", "qgap", "mass_pm"), 0.0)
    for k, (t, c) in enumerate(states()):
        plus, minus = views[2 * k], views[2 * k + 1]
        good, bad = (plus, minus) if t > c else (minus, plus)
        lg, lb = good.logp[-2], bad.logp[-2]  # the action token, last before the stop token
        p_good = 1.0 / (1.0 + math.exp(lb - lg))
        out["p_correct"] += p_good
        out["greedy"] += float(p_good > 0.5)
        out["critic_order"] += float(good.q_taken[-2] > bad.q_taken[-2])
        out["qgap"] += good.q_taken[-2] - bad.q_taken[-2]
        out["mass_pm"] += math.exp(lg) + math.exp(lb)
    return {f"probe/{k}": v / len(states()) for k, v in out.items()}
