"""Shared by the Blackjack diagnostics: the first hands of held-out seeds, and the critic's input at the decision."""

from __future__ import annotations

import torch

from vlmq_core.envs import make_env
from vlmq_core.model import Policy
from vlmq_core.objective import reply_heads
from vlmq_core.tokens import build_batch
from vlmq_core.turns import Turn


def first_hands(seed: int, n: int, env=None) -> list[tuple[int, str, dict]]:
    """``(seed, prompt, state)`` of the first hand of seeds ``seed .. seed + n - 1`` (``env`` left at the last)."""
    env = env or make_env("Blackjack")
    hands = []
    for s in range(seed, seed + n):
        obs, info = env.reset(seed=s)
        hands.append((s, obs["prompt"], info["state"]))
    return hands


def hand_turn(seed: int, prompt: str, action: str) -> Turn:
    """A first-hand turn replying ``[action] <action>`` (reward and next state unused)."""
    return Turn(f"p{seed}", 0, "Blackjack", prompt, None, f"[action] {action}", 0.0, True)


@torch.no_grad()
def decision_states(policy: Policy, turns: list[Turn], chunk: int = 16) -> torch.Tensor:
    """(N, d) raw hidden states that predict each turn's action token (the token before the stop token)."""
    out = []
    for i in range(0, len(turns), chunk):
        part = [(t, None) for t in turns[i : i + chunk]]
        batch = build_batch(policy, part)
        h = reply_heads(policy, batch).h.float()
        out.append(h[torch.stack([(batch.turn_idx == k).nonzero().squeeze(1)[-2] for k in range(len(part))])])
    return torch.cat(out)
