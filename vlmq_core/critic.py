"""The per-token critic: an MLP head with one Q-value per vocabulary token, its EMA target, and PopArt.

METHOD.md, "Heads": ``Q_phi(h) in R^{|V|}``, an MLP ``d -> 400 -> |V|`` on the backbone's hidden states.
The head outputs *normalised* values; PopArt (van Hasselt et al. 2016) holds the statistics that map them
back: ``Q = sigma * Q_norm + mu``. Its input may be whitened (:class:`InputWhitening`, our addition): the
mirror image of PopArt on the input side, with the same exact output-preserving correction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlmq_core.config import check_fields, require


@dataclass
class CriticConfig:
    """The critic head as built: its width, initial values and input/output normalisation (METHOD.md, "Heads").

    How it trains (target EMA rate, PopArt rate, whitening refreshes) is ``vlmq_core.trainer.TrainConfig``'s."""

    hidden: int = 400
    """Width of the critic MLP's hidden layer (Tables 2-3: 400)."""
    popart: bool = True
    """Normalise TD targets with PopArt (the paper); False keeps mu = 0, sigma = 1 (plain TD)."""
    popart_init_nu: float = 100.0
    """Initial second moment nu of the TD targets; sigma starts at sqrt(nu) (Tables 2-3: 100)."""
    init_q: float | Literal["min_return_to_go"] | None = None
    """Start every Q-value at this unnormalised value (output layer: zero weights, constant bias); ``min_return_to_go``
    is the dataset's lowest return-to-go, computed when training starts. None: PyTorch's random init (the paper's).

    Why it matters (docs/FINDINGS.md, finding 1): V(h) = sum_a pi(a|h) Q(h, a) runs over the whole vocabulary,
    and tokens never seen in the data keep their initial Q. With random init those sit near 0; when the data's
    returns are negative, every near-deterministic correct token then gets A < 0 and the filter drops it
    (NumberLine: 0% valid replies after AFSFT). A value at or below the lowest return-to-go keeps unseen tokens
    below the seen ones."""
    whiten: bool = False
    """Feed the critic ZCA-whitened hidden states, ``x = (h - m) W`` (:class:`InputWhitening`; ours, not the paper's).
    The decisive NumberLine states form a tight cluster far from the mean of all reply positions; whitened, a
    critic MLP separates good from bad moves in 100 steps instead of thousands (docs/FINDINGS.md, finding 3)."""

    def __post_init__(self) -> None:
        check_fields(self, "critic.")
        require(self, "critic.", {"hidden": (lambda v: v >= 1, ">= 1"), "popart_init_nu": (lambda v: v > 0, "> 0")})


class CriticHead(nn.Module):
    """``Q_phi``: hidden state (..., d) -> normalised Q-values (..., |V|)."""

    def __init__(self, d_model: int, vocab_size: int, hidden: int = 400):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, vocab_size))
        self.sparse_grad = False
        """:meth:`taken_and_all` gives the output layer's weight a sparse gradient (the taken tokens' rows), added
        into the dense ``.grad`` the trainer keeps allocated. A fresh dense (V, hidden) gradient per update costs
        ~120 ms of page faults on a CPU (80 MB is beyond malloc's reuse); set by ``Trainer``, which keeps the buffer."""

    @property
    def last(self) -> nn.Linear:
        """The output layer, rescaled by PopArt."""
        return self.net[-1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    def taken_and_all(self, h: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q(h_i, tokens_i)`` (N,) *with* gradient, through only those rows of the output layer, and every token's
        ``Q(h_i, .)`` (N, V) *without*: the critic loss differentiates the taken tokens alone (Eq. 6), so its
        gradient skips the |V|-wide weight-gradient product (2 CPU cores: 115 ms of a 600-ms update). (N, d) in."""
        z = self.net[:-1](h)  # (N, hidden)
        rows = F.embedding(tokens, self.last.weight, sparse=self.sparse_grad)  # (N, hidden)
        taken = (z * rows).sum(-1) + self.last.bias[tokens]  # (N,)
        with torch.no_grad():
            every = self.last(z)  # (N, V)
        return taken, every


@torch.no_grad()
def init_constant(head: CriticHead, value_normalised: float) -> None:
    """Make every output of `head` equal `value_normalised` for any input: zero output weights, constant bias."""
    head.last.weight.zero_()
    head.last.bias.fill_(value_normalised)


class PopArt(nn.Module):
    """Running mean ``mu`` and second moment ``nu`` of TD targets; sigma = sqrt(nu - mu^2)."""

    def __init__(self, init_nu: float = 100.0, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("nu", torch.tensor(float(init_nu) if enabled else 1.0))

    @property
    def sigma(self) -> torch.Tensor:
        return (self.nu - self.mu**2).clamp(min=1e-4).sqrt()

    def normalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mu) / self.sigma

    def denormalize(self, q: torch.Tensor) -> torch.Tensor:
        return q * self.sigma + self.mu

    @staticmethod
    def sums(targets: torch.Tensor) -> torch.Tensor:
        """Sufficient statistics of a minibatch's targets (N,): ``[sum y, sum y^2, N]`` (float64, summable over
        processes before :meth:`update`)."""
        y = targets.detach().double()
        return torch.stack([y.sum(), (y**2).sum(), torch.tensor(float(y.numel()), dtype=y.dtype, device=y.device)])

    @torch.no_grad()
    def update(self, sums: torch.Tensor, beta: float, heads: list[CriticHead]) -> None:
        """Move the statistics towards the targets' mean and mean square (rate `beta`) and rescale each head's last
        layer so its *unnormalised* outputs are unchanged (PopArt's "preserving outputs precisely"). Empty targets
        change nothing; no value is read on the host (the device is not waited for)."""
        if not self.enabled:
            return
        mu_old, sigma_old = self.mu.clone(), self.sigma.clone()
        count = sums[2].clamp(min=1)
        mean, mean_sq = (sums[0] / count).to(self.mu), (sums[1] / count).to(self.nu)
        rate = (sums[2] > 0).to(self.mu) * beta  # 0 for an empty minibatch
        self.mu.mul_(1 - rate).add_(rate * mean)
        self.nu.mul_(1 - rate).add_(rate * mean_sq)
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

    def __init__(self, d_model: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("offset", torch.zeros(d_model))  # m
        self.register_buffer("matrix", torch.eye(d_model))  # W (symmetric)
        self.register_buffer("mean", torch.zeros(d_model))  # running statistics
        self.register_buffer("cov", torch.zeros(d_model, d_model))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))  # hidden states observed
        self.register_buffer("refreshes", torch.zeros((), dtype=torch.long))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) whitened (identity when disabled; before the first refresh m = 0 and W = I, which
        give h back exactly, without reading the refresh count on the host)."""
        if not self.enabled:
            return h
        return (h - self.offset.to(h.dtype)) @ self.matrix.to(h.dtype)

    @staticmethod
    def sums(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sufficient statistics of hidden states (N, d): ``(sum x, sum x x^T, N)`` in float64 (summable over
        processes before :meth:`merge`)."""
        x = h.detach().reshape(-1, h.shape[-1]).double()
        return x.sum(0), x.T @ x, torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device)

    @torch.no_grad()
    def merge(self, sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor], beta: float, exact: bool = False) -> None:
        """Fold the statistics of :meth:`sums` into the running mean and covariance.

        ``exact`` (calibration) averages every state seen so far with equal weight; otherwise the rate is
        ``max(beta, n / (count + n))``: an exact average until the window of ``1/beta`` updates is full.
        """
        s1, s2, n = (t.to(self.mean.device) for t in sums)
        if not self.enabled:
            return
        n = n.double()
        rate = n / (self.count + n).clamp(min=1)
        if not exact:
            rate = torch.clamp(rate, min=beta)
        rate = rate * (n > 0)  # an empty minibatch changes nothing (no value read on the host)
        bm = s1 / n.clamp(min=1)
        bc = s2 / n.clamp(min=1) - torch.outer(bm, bm)
        mean, cov = self.mean.double(), self.cov.double()
        delta = bm - mean
        new_cov = (1 - rate) * cov + rate * bc + rate * (1 - rate) * torch.outer(delta, delta)
        self.mean.copy_(mean + rate * delta)
        self.cov.copy_(new_cov)
        self.count.add_(n)

    def observe(self, h: torch.Tensor, beta: float = 0.05, exact: bool = False) -> None:
        """:meth:`merge` the statistics of hidden states `h` (N, d) of this process."""
        self.merge(self.sums(h), beta, exact)

    def whitening(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, W)`` from the running statistics: the mean and ``(C + eps * mean_eig * I)^{-1/2}``."""
        cov = self.cov.double()
        evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
        evals = evals.clamp(min=0)
        floor = eps * evals.mean().clamp(min=1e-12)
        w = (evecs * (evals + floor).rsqrt()) @ evecs.T
        return self.mean.double(), w

    @torch.no_grad()
    def refresh(self, heads: list[CriticHead], eps: float = 0.01) -> None:
        """Set ``(m, W)`` from the statistics and rewrite each head's first layer so its outputs are unchanged.

        First layer ``z = W1 x + b1`` with ``x = (h - m) W``; the new one is ``W1' = W1 W W'^{-1}``,
        ``b1' = b1 + W1 W (m' - m)``. `eps` regularises small eigenvalues (``eps * mean eigenvalue`` is added).
        """
        if not self.enabled or float(self.count) == 0:
            return
        m_old = self.offset.double()
        w_old = self.matrix.double()  # the identity before the first refresh
        m_new, w_new = self.whitening(eps)
        w_new_inv = torch.linalg.inv(w_new)
        for head in heads:  # the heads may live on another device than these statistics
            first = head.net[0]
            w1 = first.weight.double()  # (hidden, d)
            w_old_, w_new_inv_, shift = (t.to(w1.device) for t in (w_old, w_new_inv, m_new - m_old))
            first.bias.add_((w1 @ w_old_ @ shift).to(first.bias.dtype))
            first.weight.copy_(w1 @ w_old_ @ w_new_inv_)
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
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)
