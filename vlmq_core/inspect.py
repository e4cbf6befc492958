"""What the critic thinks of each reply token: advantages, Q, V, log-probs and the filter mask per turn."""

from __future__ import annotations

import torch

from vlmq_core import losses
from vlmq_core.model import Policy
from vlmq_core.plots import TokenView
from vlmq_core.tokens import build_batch
from vlmq_core.turns import Turn
from vlmq_core.update import LossConfig, advantages, forward_reply, td_targets


@torch.no_grad()
def token_views(
    policy: Policy, transitions: list[tuple[Turn, Turn | None]], beta: float = 0.0, loss: LossConfig | None = None
) -> list[TokenView]:
    """One :class:`TokenView` per turn: per reply token (stop token last) its advantage (PopArt-normalised, as
    the filter of `loss` sees it: ``Q - V`` by default (Eq. 5), ``normalise(y) - V_bar`` with
    ``loss.advantage == "td"``), unnormalised Q(h, a), the V(h) that advantage subtracts (the target critic's
    with ``"td"``), the TD target y (``"td"`` only), log pi(a|h) and the Eq. 4 mask."""
    loss = loss or LossConfig()
    was_training = policy.training
    policy.eval()
    batch = build_batch(policy, transitions)
    fwd = forward_reply(policy, batch, with_critic=True)
    q_taken = fwd.q.gather(1, batch.tokens[:, None]).squeeze(1)  # (N,)
    td = loss.advantage == "td"
    y = td_targets(policy, batch, fwd, loss) if td else None  # (N,) unnormalised
    adv = advantages(policy, batch, fwd, fwd.q, q_taken, loss, y=y)  # (N,)
    keep = losses.advantage_filter(adv, beta)
    q_un = policy.popart.denormalize(q_taken.float())
    minuend = policy.popart.normalize(y.float()) if td else q_taken.float()  # A = minuend - V, so V needs no pass
    v_un = policy.popart.denormalize(minuend - adv)  # the V the filter subtracted (V_bar with "td")
    policy.train(was_training)
    views = []
    for b, (turn, _) in enumerate(transitions):
        idx = (batch.turn_idx == b).nonzero().squeeze(1)
        toks = [policy.tokenizer.decode([int(t)]) for t in batch.tokens[idx]]
        views.append(
            TokenView(
                tokens=toks,
                advantage=adv[idx].tolist(),
                q_taken=q_un[idx].tolist(),
                value=v_un[idx].tolist(),
                logp=fwd.logp[idx].tolist(),
                td_target=y[idx].tolist() if td else None,
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
    transitions: list[tuple[Turn, Turn | None]],
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
