"""Extra critic-only steps on recent reply hidden states: a critic update-to-data ratio (ours, not the paper's).

Why (README finding 7, ``scripts/diagnostics/critic_sample_probe.py``): on NumberLine the critic head needs a few
thousand turn-samples before ``Q(h, +)`` and ``Q(h, -)`` are ordered per state at the decision token, while
the actor learns the decision from a correct filter in ~100 updates of 8 turns. Every update already computes
the reply hidden states h and their Eq. 6 targets y; :class:`CriticReplay` keeps those of the last
``window`` updates (detached), and the trainer's critic-only steps regress the critic head on a sample of
them with :func:`critic_replay_loss`, ``L = mean (Q_phi(h, a) - normalise(y))^2`` (Eq. 6 on stored data),
computing only the taken tokens' rows of the head. The backbone and the actor are untouched by these steps.

Approximations, both small at the defaults: h comes from the LoRA weights of the update that stored it,
and y from that update's target critic (which moves by ``tau`` per update). Targets are stored
unnormalised and normalised with the *current* PopArt statistics; raw h goes through the *current*
input whitening, so both stay consistent with the heads after a rescale.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from vlmq_core import losses
from vlmq_core.model import Policy


@dataclass
class CriticReplayConfig:
    """Extra critic-only steps per update. ``steps = 0`` (the default) is the paper's one critic step per update."""

    steps: int = 0
    """Critic-only optimizer steps after each update."""
    batch_turns: int = 32
    """Turns (with all their reply tokens) per critic-only step."""
    window: int = 16
    """The critic-only steps of update u sample turns of updates u - window + 1 .. u (FIFO)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_turns < 1 or self.window < 1:
            raise ValueError(f"CriticReplayConfig needs steps >= 0, batch_turns >= 1, window >= 1, got {self}")


class CriticReplay:
    """Per-turn ``(h, tokens, y)`` of the last ``window`` updates: h (n, d) detached, on the policy's device;
    tokens (n,); y (n,) unnormalised Eq. 6 targets."""

    def __init__(self, window: int):
        self.updates: deque[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = deque(maxlen=window)

    def begin_update(self) -> None:
        """Open a new update; the oldest one falls out once ``window`` are held."""
        self.updates.append([])

    def add(self, h: torch.Tensor, tokens: torch.Tensor, y: torch.Tensor, turn_idx: torch.Tensor) -> None:
        """Store one minibatch's reply tokens, split by turn. h: (N, d); tokens, y, turn_idx: (N,)."""
        h, tokens, y, turn_idx = (t.detach() for t in (h, tokens, y, turn_idx))
        if not self.updates:
            self.begin_update()
        for j in turn_idx.unique(sorted=True).tolist():
            rows = turn_idx == j
            self.updates[-1].append((h[rows].float(), tokens[rows], y[rows].float()))

    def __len__(self) -> int:
        """Turns held."""
        return sum(len(u) for u in self.updates)

    def sample(self, n_turns: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up to ``n_turns`` distinct turns, packed: h (N, d), tokens (N,), y (N,)."""
        turns = [t for u in self.updates for t in u]
        if not turns:
            raise RuntimeError("CriticReplay is empty: it is filled by Trainer.train_step before any replay step.")
        pick = rng.choice(len(turns), min(n_turns, len(turns)), replace=False)
        h, tok, y = zip(*(turns[i] for i in pick), strict=True)
        return torch.cat(h), torch.cat(tok), torch.cat(y)

    def state_dict(self) -> dict:
        return {"updates": [list(u) for u in self.updates]}

    def load_state_dict(self, state: dict) -> None:
        self.updates.clear()
        self.updates.extend(state["updates"])


def critic_replay_loss(
    policy: Policy, h: torch.Tensor, tokens: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 6 on stored data: the critic loss of taken tokens ``tokens`` (N,) at detached hidden states h (N, d)
    against unnormalised targets y (N,), normalised with the current PopArt statistics. Only the N taken rows of
    the |V|-wide output layer are computed."""
    device = policy.device
    q_taken = policy.q_taken(h.to(device), tokens.to(device))  # (N,) normalised
    return losses.critic_loss(q_taken, policy.popart.normalize(y.to(device)))
