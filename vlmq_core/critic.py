"""The per-token critic: an MLP head with one Q-value per vocabulary token, its EMA target, and PopArt.

METHOD.md, "Heads": ``Q_phi(h) in R^{|V|}``, an MLP ``d -> 400 -> |V|`` on the backbone's hidden states.
The head outputs *normalised* values; PopArt (van Hasselt et al. 2016) holds the statistics that map them
back: ``Q = sigma * Q_norm + mu``.
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
