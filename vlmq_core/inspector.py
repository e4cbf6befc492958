"""What the critic thinks of each reply token: advantages, Q, V, log-probs and the filter mask per turn.

:func:`token_views` turns transitions into :class:`TokenView` records (plain lists, ready for the plots in
:mod:`vlmq_core.plots` and the widgets); :func:`filter_summary` counts what the filter keeps over a dataset;
:func:`token_usage_summary` measures the policy mass and Q-values off the data's tokens (the max-Q ablation).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from vlmq_core import losses
from vlmq_core.losses import LossConfig
from vlmq_core.model import Policy
from vlmq_core.objective import filter_advantage, reply_heads, td_targets, token_usage
from vlmq_core.tokens import build_batch
from vlmq_core.turns import Transition


@dataclass
class TokenView:
    """What the critic thinks of one reply (one turn), token by token; the stop token comes last."""

    tokens: list[str]
    """The reply's tokens, decoded one by one."""
    advantage: list[float]
    """The advantage the filter reads (PopArt-normalised units): ``Q - V`` (Eq. 5) or ``(y - V_bar) / sigma``."""
    q_taken: list[float]
    """Unnormalised Q(h, a) of the online critic."""
    value: list[float]
    """Unnormalised V the advantage subtracts: the online critic's V(h), or the target's V_bar(h) with ``td``."""
    logp: list[float]
    """log pi(a | h)."""
    kept: list[bool]
    """The Eq. 4 mask at the view's beta."""
    prompt: str
    reply: str
    reward: float
    title: str = ""
    td_target: list[float] | None = None
    """The taken token's TD target y (unnormalised) when the filter read ``y - V_bar`` (``LossConfig.advantage``)."""

    def __post_init__(self) -> None:
        n = len(self.tokens)
        for name in ("advantage", "q_taken", "value", "logp", "kept", "td_target"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise ValueError(f"TokenView.{name} has {len(getattr(self, name))} entries, tokens has {n}")


@torch.no_grad()
def token_views(
    policy: Policy, transitions: list[Transition], beta: float = 0.0, loss: LossConfig | None = None
) -> list[TokenView]:
    """One :class:`TokenView` per turn, as the filter of `loss` sees it at the policy's current state: per reply
    token (stop token last) its advantage (``Q - V`` by default (Eq. 5), ``(y - V_bar) / sigma`` with
    ``loss.advantage == "td"``), unnormalised Q(h, a), the V that advantage subtracts, the TD target y (``td``
    only), log pi(a|h) and the Eq. 4 mask at `beta`. Changes nothing."""
    loss = loss or LossConfig()
    was_training = policy.training
    policy.eval()
    batch = build_batch(policy, transitions)
    heads = reply_heads(policy, batch, critic=True)
    targets = td_targets(policy, batch, heads, loss)
    adv = filter_advantage(policy, heads, heads.q, targets, loss)  # (N,)
    keep = losses.advantage_filter(adv, beta)
    q_un = policy.popart.denormalize(heads.q.gather(1, batch.tokens[:, None]).squeeze(1).float())
    td = loss.advantage == "td"
    v_un = targets.v_bar if td else policy.popart.denormalize(losses.expected_value(heads.logits, heads.q))
    policy.train(was_training)
    views = []
    for b, (turn, _) in enumerate(transitions):
        idx = (batch.turn_idx == b).nonzero().squeeze(1)
        views.append(
            TokenView(
                tokens=[policy.tokenizer.decode([int(t)]) for t in batch.tokens[idx]],
                advantage=adv[idx].tolist(),
                q_taken=q_un[idx].tolist(),
                value=v_un[idx].tolist(),
                logp=heads.logp[idx].tolist(),
                td_target=targets.y[idx].tolist() if td else None,
                kept=keep[idx].tolist(),
                prompt=turn.prompt,
                reply=turn.reply,
                reward=turn.reward,
                title=f"{turn.source}/{turn.strategy} t={turn.t} r={turn.reward:+g}",
            )
        )
    return views


def filter_summary(
    policy: Policy,
    transitions: list[Transition],
    beta: float = 0.0,
    chunk: int = 8,
    loss: LossConfig | None = None,
) -> dict[str, float]:
    """What the AFSFT filter (Eq. 4) keeps on `transitions`, split the way that shows whether it helps:

    - ``filter/kept_all``: every reply token;
    - ``filter/kept_format``: tokens of valid replies other than the action token (formatting + stop token);
    - ``filter/kept_action_good`` / ``filter/kept_action_bad``: the action token (the last one before the stop
      token) of valid replies whose turn reward is >= 0 / < 0 (a good filter keeps the first, drops the second);
    - ``filter/kept_invalid``: tokens of invalid replies.
    NaN where a group is empty. ``loss`` picks the advantage the filter reads (``LossConfig.advantage``).
    """
    groups: dict[str, list[bool]] = {k: [] for k in ("all", "format", "action_good", "action_bad", "invalid")}
    for start in range(0, len(transitions), chunk):
        part = transitions[start : start + chunk]
        for (turn, _), view in zip(part, token_views(policy, part, beta, loss), strict=True):
            groups["all"] += view.kept
            if not turn.valid:
                groups["invalid"] += view.kept
                continue
            action = len(view.kept) - 2
            groups["format"] += [k for j, k in enumerate(view.kept) if j != action]
            if action >= 0:
                groups["action_good" if turn.reward >= 0 else "action_bad"].append(view.kept[action])
    return {f"filter/kept_{k}": (sum(v) / len(v) if v else float("nan")) for k, v in groups.items()}


@contextmanager
def _inference(policy: Policy) -> Iterator[None]:
    """The model in eval mode (no dropout) and no gradients inside; its previous mode restored after."""
    was_training = policy.model.training
    policy.model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        policy.model.train(was_training)


def token_usage_summary(
    policy: Policy, transitions: list[Transition], seen: torch.Tensor, critic: bool = True, chunk: int = 8
) -> dict[str, float]:
    """:func:`vlmq_core.objective.token_usage` over `transitions` (every reply position weighted equally), at the
    policy's current state: how much policy mass sits on tokens the data never uses (`seen`, (V,) bool, from
    :func:`vlmq_core.tokens.seen_tokens`), and with `critic` (false for a run that trained none), their Q-values
    against the data's tokens'."""
    sums: dict[str, float] = {}
    n = 0
    with _inference(policy):
        for start in range(0, len(transitions), chunk):
            batch = build_batch(policy, transitions[start : start + chunk])
            heads = reply_heads(policy, batch, critic=critic)
            stats = token_usage(policy, heads, seen.to(heads.logits.device), heads.q)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * batch.num_tokens
            n += batch.num_tokens
    return {k: v / n for k, v in sums.items()}


def action_q(policy: Policy, transition: Transition) -> torch.Tensor:
    """(V,) unnormalised online Q-values over the whole vocabulary at the action token of one turn (the last reply
    token before the stop token): what a max-Q actor is pulled towards there."""
    with _inference(policy):
        batch = build_batch(policy, [transition])
        heads = reply_heads(policy, batch, critic=True)
    position = max(batch.num_tokens - 2, 0)
    return policy.popart.denormalize(heads.q[position].float()).cpu()
