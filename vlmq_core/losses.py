"""Loss functions of VLM Q-Learning: pure functions of tensors returning ``(loss, stats)``.

Shapes: ``N`` reply tokens of a minibatch, packed; ``V`` the vocabulary (language head output size).
Equation numbers are the paper's (METHOD.md restores them).
"""

from __future__ import annotations

import math

import torch


def sft_loss(logp: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3: ``L_SFT = - mean_{reply tokens} log pi(a^{j+1} | h^j)``.

    logp: (N,) log-probability of each taken reply token.
    """
    loss = -logp.mean()
    return loss, {"actor/sft_nll": loss.item(), "actor/kept_frac": 1.0}


def advantage_filter(adv: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 5: ``f(h, a) = 1[A(h, a) >= beta]`` (no gradient). adv: (N,) -> (N,) bool."""
    return adv.detach() >= beta


def afsft_loss(logp: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 4: ``L_AFSFT = - sum_j f(h^j, a^{j+1}) log pi(a^{j+1} | h^j) / N``.

    The denominator counts every reply token (kept or not), so ``keep`` all True gives exactly Eq. 3.
    logp: (N,); keep: (N,) bool from :func:`advantage_filter`.
    """
    loss = -(logp * keep.to(logp.dtype)).sum() / logp.numel()
    return loss, {"actor/afsft_loss": loss.item(), "actor/kept_frac": keep.float().mean().item()}


def expected_value(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``V(h) = sum_a pi(a|h) Q(h, a)``, exact over the vocabulary, no gradient. (N, V), (N, V) -> (N,)."""
    with torch.no_grad():
        return (logits.float().softmax(-1) * q.float()).sum(-1)


def advantages(q_taken: torch.Tensor, logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``A(h, a) = Q(h, a) - V(h)``, no gradient. q_taken: (N,); logits, q: (N, V) -> (N,)."""
    return q_taken.detach().float() - expected_value(logits, q.detach())


def td_advantages(y: torch.Tensor, logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``A(h, a) = y - V(h)``: the taken token's TD target in place of ``Q(h, a)`` (our option, not Eq. 5's).

    ``y = r + gamma V_bar(h')`` (Eq. 6, or its n-step form) is what ``Q(h, a)`` is regressed on, so this is the
    one-step-lookahead estimate of the same advantage, defined only for tokens taken in the data (where h' is
    known). It separates moves as soon as the reward or the next state's value does, before the critic has
    learned ``Q(h, a)`` per state; noisier under stochastic transitions. No gradient. ``update.advantages`` passes
    the *target* critic's q, the one y bootstraps from, so ``A`` is that critic's TD error: with the online
    critic's V, the target's lag (1/tau updates, from a pessimistic init) would bias every y below V(h).
    y: (N,) normalised targets; logits, q: (N, V) -> (N,).
    """
    return advantages(y, logits, q)


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
    counts = torch.bincount(turn_idx, minlength=int(turn_idx.max()) + 1 if N else 0)  # (B,)
    starts = torch.cumsum(counts, 0) - counts  # (B,)
    pos = idx - starts[turn_idx]  # (N,) position j inside the turn
    m = torch.clamp(counts[turn_idx] - pos, max=n)  # (N,) steps until the bootstrap
    return (gamma ** (m - 1).to(y1.dtype) * y1[idx + m - 1]).detach()


def critic_loss(q_taken: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 6: ``L_Q = mean (Q_phi(h, a) - y)^2`` over reply tokens (both PopArt-normalised). (N,), (N,)."""
    err = q_taken.float() - target.detach().float()
    loss = (err**2).mean()
    return loss, {"critic/loss": loss.item(), "critic/abs_td_error": err.abs().mean().item()}


def maxq_loss(logits: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The max-Q actor (ablation, Fig. 5): ``L = - mean_h sum_a pi(a|h) stopgrad(Q(h, a))``. (N, V), (N, V)."""
    probs = logits.float().softmax(-1)
    loss = -(probs * q.detach().float()).sum(-1).mean()
    return loss, {"actor/maxq_loss": loss.item(), "actor/kept_frac": 1.0}


def joint_loss(actor: torch.Tensor, critic: torch.Tensor, critic_weight: float) -> torch.Tensor:
    """Eq. 7: ``L = L_actor + lambda L_Q``."""
    return actor + critic_weight * critic


def beta_schedule(
    step: int, filter_start_step: int, beta: float = 0.0, ramp_steps: int = 0, ramp_from: float = -1.0
) -> float:
    """Filter threshold per update: ``-inf`` before ``filter_start_step`` (pure SFT), then ``beta``.

    With ``ramp_steps > 0`` the threshold rises linearly from ``ramp_from`` to ``beta`` over that many updates.
    """
    if step < filter_start_step:
        return -math.inf
    if ramp_steps > 0 and step < filter_start_step + ramp_steps:
        frac = (step - filter_start_step) / ramp_steps
        return ramp_from + frac * (beta - ramp_from)
    return beta
