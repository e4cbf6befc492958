"""Loss functions of VLM Q-Learning and their settings: pure functions of tensors returning ``(loss, stats)``.

``stats`` values are detached 0-dim tensors (or plain numbers): reading one on the host would wait for the device,
so the trainer turns a whole row into numbers once per update (``Trainer.train_step``).

Shapes: ``N`` reply tokens of a minibatch, packed; ``V`` the vocabulary (language head output size).
Equation numbers are the paper's (METHOD.md restores them). ``vlmq_core.objective`` applies them to a policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from vlmq_core.config import ConfigError, check_fields


@dataclass
class LossConfig:
    """Which actor loss, and how the critic's targets and the filter's advantage are formed (METHOD.md, "Losses")."""

    actor: Literal["afsft", "sft", "maxq"] = "afsft"
    """``afsft`` (Eq. 4-5), ``sft`` (Eq. 3) or ``maxq`` (the ablation actor of Fig. 5)."""
    gamma: float = 0.995
    """Discount per token transition (Tables 2-3: 0.995)."""
    critic_weight: float = 1.0
    """lambda of Eq. 7. With actor ``sft`` and 0 the critic is skipped entirely (plain SFT, no extra pass)."""
    filter_start_step: int = 0
    """Updates with beta = -inf (pure SFT) before the advantage filter switches on."""
    beta: float = 0.0
    """Filter threshold after the start, in PopArt-normalised advantage units (Eq. 5)."""
    td_steps: int = 1
    """Token transitions before the critic target bootstraps inside a reply (:func:`nstep_target`; ours). 1 is
    Eq. 6; a value above the longest reply gives every reply token the turn's target (r_t + the next turn)."""
    advantage: Literal["q", "td"] = "q"
    """Advantage the filter reads: ``q`` is the paper's ``Q(h, a) - V(h)`` (Eq. 5); ``td`` is ``y - V_bar(h)``, the
    taken token's (n-step) TD target minus the target critic's value (:func:`td_advantage`; ours, docs/PAPER_MAP.md)."""

    def __post_init__(self) -> None:
        check_fields(self, "loss.")
        if self.td_steps < 1:
            raise ConfigError(f"loss.td_steps must be >= 1 (1 is Eq. 6), not {self.td_steps}.")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"loss.gamma must be in (0, 1], not {self.gamma}.")

    @property
    def uses_critic(self) -> bool:
        """False for plain SFT (actor ``sft``, critic weight 0): no critic, no TD targets."""
        return not (self.actor == "sft" and self.critic_weight == 0)


Stats = dict[str, torch.Tensor | float]
"""Namespaced statistics of a loss: detached 0-dim tensors or numbers (docs/METRICS.md)."""


def sft_loss(logp: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Eq. 3: ``L_SFT = - mean_{reply tokens} log pi(a^{j+1} | h^j)``.

    logp: (N,) log-probability of each taken reply token.
    """
    loss = -logp.mean()
    return loss, {"actor/kept_frac": 1.0}


def advantage_filter(adv: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 5: ``f(h, a) = 1[A(h, a) >= beta]`` (no gradient). adv: (N,) -> (N,) bool."""
    return adv.detach() >= beta


def afsft_loss(logp: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Eq. 4: ``L_AFSFT = - sum_j f(h^j, a^{j+1}) log pi(a^{j+1} | h^j) / N``.

    The denominator counts every reply token (kept or not), so ``keep`` all True gives exactly Eq. 3.
    logp: (N,); keep: (N,) bool from :func:`advantage_filter`.
    """
    loss = -(logp * keep.to(logp.dtype)).sum() / logp.numel()
    return loss, {"actor/afsft_loss": loss.detach(), "actor/kept_frac": keep.float().mean()}


def expected_value(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``V(h) = sum_a pi(a|h) Q(h, a)``, exact over the vocabulary, no gradient. (N, V), (N, V) -> (N,)."""
    with torch.no_grad():
        return (logits.float().softmax(-1) * q.float()).sum(-1)


def q_advantage(q_taken: torch.Tensor, logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Eq. 5's advantage ``A(h, a) = Q(h, a) - V(h)``, no gradient. q_taken: (N,); logits, q: (N, V) -> (N,)."""
    return q_taken.detach().float() - expected_value(logits, q.detach())


def td_advantage(y: torch.Tensor, v_bar: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``A(h, a) = (y - V_bar(h)) / sigma``: the taken token's TD target in place of ``Q(h, a)`` (ours, not Eq. 5).

    ``y = r + gamma V_bar(h')`` (Eq. 6, or its n-step form) is what ``Q(h, a)`` is regressed on, so this is the
    one-step-lookahead estimate of the same advantage, defined only for tokens taken in the data (where h' is
    known). It separates moves as soon as the reward or the next state's value does, before the critic has
    learned ``Q(h, a)`` per state; noisier under stochastic transitions. ``V_bar(h) = sum_a pi(a|h) Q_bar(h, a)``
    is the *target* critic's value, the one y bootstraps from, so ``A`` is that critic's TD error: with the online
    critic's V, the target's lag (1/tau updates, from a pessimistic init) would bias every y below V(h).
    Dividing by PopArt's sigma gives the advantage in normalised units, ``normalise(y) - normalise(V_bar)``
    (mu cancels). No gradient. y, v_bar: (N,) unnormalised -> (N,).
    """
    return ((y.detach().float() - v_bar.detach().float()) / sigma).float()


def td_target(rewards: torch.Tensor, dones: torch.Tensor, next_v: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 6 target: ``y = r + gamma (1 - d) V_bar(h')`` with ``V_bar(h') = sum_a' pi(a'|h') Q_phibar(h', a')``.

    All (N,); terminal transitions (d = 1) do not bootstrap. No gradient.
    """
    return (rewards + gamma * (1.0 - dones) * next_v).detach()


def nstep_target(y1: torch.Tensor, turn_idx: torch.Tensor, n: int, gamma: float) -> torch.Tensor:
    """n-step targets inside a reply, built from the one-step targets of Eq. 6 (our option, not the paper's).

    Rewards inside a reply are 0, so the n-step target of token j is the discounted one-step target of the
    token ``m - 1`` steps later, ``m = min(n, l - j)`` (``l`` tokens in its turn, j counted from 0):
    ``y_n[j] = gamma^(m-1) y1[j + m - 1]``. It never crosses the stop token, whose target already holds r_t and
    the next turn's value. ``n = 1`` is Eq. 6 exactly; ``n >= l`` gives every token of the turn
    ``gamma^(l-1-j) (r_t + gamma (1 - d) V_bar(h_{t+1}^0))``. Uncorrected: the target follows the *data's*
    continuation of the reply, not pi's (as n-step returns in Rainbow / R2D2).

    y1: (N,) one-step targets; turn_idx: (N,) turn of each token, tokens of a turn contiguous. -> (N,)
    """
    if n < 1:
        raise ValueError(f"n-step targets need n >= 1, not {n}")
    if n == 1:
        return y1.detach()
    N = y1.shape[0]
    idx = torch.arange(N, device=y1.device)
    ones = torch.ones_like(turn_idx)
    counts = torch.zeros(N, dtype=torch.long, device=y1.device).scatter_add_(0, turn_idx, ones)  # tokens per turn
    starts = torch.cumsum(counts, 0) - counts  # first token of each turn (only turns 0..B-1 are read)
    pos = idx - starts[turn_idx]  # (N,) position j inside the turn
    m = torch.clamp(counts[turn_idx] - pos, max=n)  # (N,) steps until the bootstrap
    return (gamma ** (m - 1).to(y1.dtype) * y1[idx + m - 1]).detach()


def critic_loss(q_taken: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Eq. 6: ``L_Q = mean (Q_phi(h, a) - y)^2`` over reply tokens (both PopArt-normalised). (N,), (N,)."""
    err = q_taken.float() - target.detach().float()
    loss = (err**2).mean()
    return loss, {"critic/loss": loss.detach(), "critic/abs_td_error": err.detach().abs().mean()}


def maxq_loss(logits: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """The max-Q actor (ablation, Fig. 5): ``L = - mean_h sum_a pi(a|h) stopgrad(Q(h, a))``. (N, V), (N, V)."""
    probs = logits.float().softmax(-1)
    loss = -(probs * q.detach().float()).sum(-1).mean()
    return loss, {"actor/maxq_loss": loss.detach(), "actor/kept_frac": 1.0}


def joint_loss(actor: torch.Tensor, critic: torch.Tensor, critic_weight: float) -> torch.Tensor:
    """Eq. 7: ``L = L_actor + lambda L_Q``."""
    return actor + critic_weight * critic


def beta_schedule(step: int, filter_start_step: int, beta: float = 0.0) -> float:
    """Filter threshold of update `step`: ``-inf`` before ``filter_start_step`` (pure SFT, Eq. 3), then ``beta``."""
    return -math.inf if step < filter_start_step else beta
