"""The per-token critic: an MLP head with one Q-value per vocabulary token, its EMA target, and PopArt.

METHOD.md, "Heads": ``Q_phi(h) in R^{|V|}``, an MLP ``d -> 400 -> |V|`` on the backbone's hidden states.
The head outputs *normalised* values; PopArt (van Hasselt et al. 2016) holds the statistics that map them
back: ``Q = sigma * Q_norm + mu``. Its input may be whitened (:class:`InputWhitening`, our addition): the
mirror image of PopArt on the input side, with the same exact output-preserving correction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class CriticConfig:
    """Critic head, target critic and PopArt settings (METHOD.md, Tables 2-3)."""

    hidden: int = 400
    """Width of the critic MLP's hidden layer."""
    tau: float = 0.008
    """EMA rate of the target critic: phi_bar <- (1 - tau) phi_bar + tau phi."""
    popart: bool = True
    """Normalise TD targets with PopArt; False keeps mu=0, sigma=1 (plain TD)."""
    popart_beta: float = 5e-4
    """PopArt statistics rate (beta_popart)."""
    popart_init_nu: float = 100.0
    """Initial second moment nu of the TD targets (sigma starts at sqrt(nu))."""
    init_q: float | None = None
    """If set, every Q-value starts at this unnormalised value (output layer: zero weights, constant bias).

    None keeps PyTorch's random init (the paper's). Why it matters: V(h) = sum_a pi(a|h) Q(h, a) runs over the
    whole vocabulary, and tokens never seen in the data keep their initial Q. With random init those sit near 0;
    when the data's returns are negative, every frequent, near-deterministic correct token then gets A < 0 and
    the filter drops it (measured on NumberLine: the formatting tokens `[`, `action` kept 0/46 times, 0% valid
    replies after AFSFT). A pessimistic value at or below the data's lowest return-to-go keeps unseen tokens
    below the seen ones. See :func:`vlmq_core.buffer.TurnBuffer.min_return_to_go`.
    """
    whiten: bool = False
    """Feed the critic ZCA-whitened hidden states, ``x = (h - m) W`` (:class:`InputWhitening`). Not in the paper.

    Why it matters, measured on NumberLine (``scripts/diagnostics/critic_probe.py``): the decisive states (e.g. the
    stop token after ``+``/``-``) form a tight cluster far from the mean of all reply positions. The move's
    quality is linearly readable there (probe accuracy 1.0), yet the critic MLP regressed on the turn reward
    reaches held-out AUC 0.58 (raw) or 0.64 (per-feature standardised) after 100 Adam steps; whitened with
    statistics of all reply positions, 0.999. Off by default (the paper's raw hidden states); notebook 03
    turns it on with n-step targets (``LossConfig.td_steps``), see ``docs/PAPER_MAP.md``.
    """
    whiten_eps: float = 0.01
    """Whitening regulariser: eigenvalues of the covariance get ``eps * mean eigenvalue`` added."""
    whiten_beta: float = 0.05
    """Rate of the running input statistics per update (after a first exact average over the calibration)."""
    whiten_every: int = 10
    """Recompute the whitening from the running statistics every this many updates (0: only at calibration).
    10 / 0.05 gave the best filter in joint NumberLine runs (README); 100 / 0.01 and calibration-only did worse."""
    whiten_calib_turns: int = 64
    """Turns run through the backbone (no gradient) to estimate the statistics before the first update."""


class CriticHead(nn.Module):
    """``Q_phi``: hidden state (..., d) -> normalised Q-values (..., |V|)."""

    def __init__(self, d_model: int, vocab_size: int, hidden: int = 400):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, vocab_size))

    @property
    def last(self) -> nn.Linear:
        """The output layer, rescaled by PopArt."""
        return self.net[-1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    def taken(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Only the rows of given tokens: ``Q(h_i, tokens_i)``, (N, d), (N,) -> (N,), without the |V|-wide layer."""
        z = self.net[:-1](h)  # (N, hidden)
        return (z * self.last.weight[tokens]).sum(-1) + self.last.bias[tokens]


@torch.no_grad()
def init_constant(head: CriticHead, value_normalised: float) -> None:
    """Make every output of `head` equal `value_normalised` for any input: zero output weights, constant bias."""
    head.last.weight.zero_()
    head.last.bias.fill_(value_normalised)


class PopArt(nn.Module):
    """Running mean ``mu`` and second moment ``nu`` of TD targets; sigma = sqrt(nu - mu^2)."""

    def __init__(self, beta: float = 5e-4, init_nu: float = 100.0, enabled: bool = True):
        super().__init__()
        self.beta, self.enabled = beta, enabled
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("nu", torch.tensor(float(init_nu) if enabled else 1.0))

    @property
    def sigma(self) -> torch.Tensor:
        return (self.nu - self.mu**2).clamp(min=1e-4).sqrt()

    def normalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mu) / self.sigma

    def denormalize(self, q: torch.Tensor) -> torch.Tensor:
        return q * self.sigma + self.mu

    @torch.no_grad()
    def update(self, targets: torch.Tensor, heads: list[CriticHead]) -> None:
        """Move the statistics towards ``targets`` (N,) and rescale each head's last layer so its
        *unnormalised* outputs are unchanged (PopArt's "preserving outputs precisely")."""
        if not self.enabled or targets.numel() == 0:
            return
        mu_old, sigma_old = self.mu.clone(), self.sigma.clone()
        y = targets.detach().double()
        self.mu.mul_(1 - self.beta).add_(self.beta * y.mean().to(self.mu.dtype))
        self.nu.mul_(1 - self.beta).add_(self.beta * (y**2).mean().to(self.nu.dtype))
        sigma_new = self.sigma
        for head in heads:
            layer = head.last
            layer.weight.mul_(sigma_old / sigma_new)
            layer.bias.mul_(sigma_old).add_(mu_old - self.mu).div_(sigma_new)


class InputWhitening(nn.Module):
    """ZCA whitening of the critic's input, ``x = (h - m) W``, from running statistics of the hidden states.

    Shared by the online and the target critic (like :class:`PopArt`). :meth:`observe` folds hidden states
    into the running mean and covariance; :meth:`refresh` recomputes ``m`` and ``W = (C + eps I)^{-1/2}``
    and rewrites each head's *first* layer so every head's outputs stay exactly what they were (input-side
    "preserving outputs precisely"). Gradients flow through ``W`` to the backbone: the transform is fixed
    between refreshes, not learned. Disabled, it is the identity.
    """

    def __init__(self, d_model: int, beta: float = 0.01, eps: float = 0.01, enabled: bool = True):
        super().__init__()
        self.beta, self.eps, self.enabled = beta, eps, enabled
        self.register_buffer("offset", torch.zeros(d_model))  # m
        self.register_buffer("matrix", torch.eye(d_model))  # W (symmetric)
        self.register_buffer("mean", torch.zeros(d_model))  # running statistics
        self.register_buffer("cov", torch.zeros(d_model, d_model))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))  # hidden states observed
        self.register_buffer("refreshes", torch.zeros((), dtype=torch.long))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) whitened (identity when disabled or before the first refresh)."""
        if not self.enabled or int(self.refreshes) == 0:
            return h
        return (h - self.offset.to(h.dtype)) @ self.matrix.to(h.dtype)

    @torch.no_grad()
    def observe(self, h: torch.Tensor, exact: bool = False) -> None:
        """Fold hidden states ``h`` (N, d) into the running statistics.

        ``exact`` (calibration) averages every state seen so far with equal weight; otherwise the rate is
        ``max(beta, N / (count + N))``: an exact average until the window of ``1/beta`` updates is full.
        """
        if not self.enabled or h.numel() == 0:
            return
        x = h.detach().reshape(-1, h.shape[-1]).double()
        n = x.shape[0]
        rate = n / (float(self.count) + n)
        if not exact:
            rate = max(self.beta, rate)
        bm = x.mean(0)
        bc = (x - bm).T @ (x - bm) / n
        mean, cov = self.mean.double(), self.cov.double()
        delta = bm - mean
        new_cov = (1 - rate) * cov + rate * bc + rate * (1 - rate) * torch.outer(delta, delta)
        self.mean.copy_(mean + rate * delta)
        self.cov.copy_(new_cov)
        self.count.add_(n)

    def whitening(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, W)`` from the running statistics: the mean and ``(C + eps * mean_eig * I)^{-1/2}``."""
        cov = self.cov.double()
        evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
        evals = evals.clamp(min=0)
        floor = self.eps * evals.mean().clamp(min=1e-12)
        w = (evecs * (evals + floor).rsqrt()) @ evecs.T
        return self.mean.double(), w

    @torch.no_grad()
    def refresh(self, heads: list[CriticHead]) -> None:
        """Set ``(m, W)`` from the statistics and rewrite each head's first layer so its outputs are unchanged.

        First layer ``z = W1 x + b1`` with ``x = (h - m) W``; the new one is ``W1' = W1 W W'^{-1}``,
        ``b1' = b1 + W1 W (m' - m)``.
        """
        if not self.enabled or float(self.count) == 0:
            return
        m_old = self.offset.double()
        w_old = self.matrix.double() if int(self.refreshes) > 0 else torch.eye(len(m_old), dtype=torch.float64)
        m_new, w_new = self.whitening()
        w_new_inv = torch.linalg.inv(w_new)
        for head in heads:
            first = head.net[0]
            w1 = first.weight.double()  # (hidden, d)
            first.bias.add_((w1 @ w_old @ (m_new - m_old).to(w1.device)).to(first.bias.dtype))
            first.weight.copy_(w1 @ w_old @ w_new_inv)
        self.offset.copy_(m_new)
        self.matrix.copy_(w_new)
        self.refreshes.add_(1)


def make_target(critic: CriticHead) -> CriticHead:
    """A frozen copy of the critic head: the target critic phi_bar."""
    target = copy.deepcopy(critic)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """phi_bar <- (1 - tau) phi_bar + tau phi."""
    for pt, po in zip(target.parameters(), online.parameters(), strict=True):
        pt.lerp_(po, tau)
