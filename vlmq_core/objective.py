"""The loss of a minibatch, as a function of the policy's current state: it changes nothing.

Pseudo-code of one training step (METHOD.md); the lines between the rules are state changes, made by
``Trainer.train_step`` and nowhere else::

    h      = f_theta([p_t ; a_t ; stop])[reply positions]           # Eq. 1, (N, d)          reply_hidden/heads
    h0'    = stopgrad(f_theta(p_{t+1}))[-1]                         # Eq. 2, non-terminal turns  td_targets
    V_bar  = sum_a pi(a|.) Q_bar(., a)  at every h and h0'          # target head, one pass
    y      = r + gamma (1 - d) V_bar(h')                            # Eq. 6 (h' = the next reply token's h, or h0')
    y      = gamma^(m-1) y[j + m - 1], m = min(td_steps, l - j)      # optional n-step inside a reply (ours)
    ------------------------------------------------------------------------------------------------------
    PopArt.update(y)                                                # rescales the critic's and target's last layer
    whitening statistics += h                                       # optional input whitening (ours)
    ------------------------------------------------------------------------------------------------------
    Q(h)   = critic((h - m) W)                                      # loss_from_heads
    L_Q    = mean (Q(h, a) - normalise(y))^2                         # Eq. 6
    A      = Q(h, a) - sum_a pi(a|h) Q(h, a)                         # Eq. 5 (advantage "q"), no gradient
           | (y - V_bar(h)) / sigma                                  # advantage "td" (ours), no gradient
    L_act  = - sum 1[A >= beta] log pi(a|h) / N                      # Eq. 4-5 (beta = -inf: Eq. 3) | max-Q
    L      = L_act + lambda L_Q                                      # Eq. 7
    ------------------------------------------------------------------------------------------------------
    optimizer step; phi_bar <- (1 - tau) phi_bar + tau phi; every k updates: whitening refresh

:func:`minibatch_loss` is the whole loss at the current state (pure: calling it twice gives the same loss and
leaves every parameter and buffer as it was). :func:`reply_heads` is the one forward entry point for "the
heads at the reply positions", used by the loss, the inspector, the benchmarks and the diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmq_core import losses
from vlmq_core.losses import LossConfig
from vlmq_core.model import Policy
from vlmq_core.tokens import TokenBatch


@dataclass
class ReplyHeads:
    """Both heads at the reply tokens of a minibatch (N tokens, packed)."""

    h: torch.Tensor
    """(N, d) hidden states h^j that predict each reply token (Eq. 1)."""
    logits: torch.Tensor
    """(N, V) language-head logits, float32."""
    logp: torch.Tensor
    """(N,) log pi(a^{j+1} | h^j) of the taken tokens."""
    taken: torch.Tensor
    """(N,) the taken token ids a^{j+1}."""
    q: torch.Tensor | None = None
    """(N, V) normalised Q-values of the online critic (only when asked for)."""


@dataclass
class Targets:
    """What the critic's targets and the ``td`` advantage need, from the target critic (no gradient)."""

    y: torch.Tensor
    """(N,) unnormalised TD targets of the taken tokens (Eq. 6, or their n-step form)."""
    v_bar: torch.Tensor
    """(N,) unnormalised ``V_bar(h) = sum_a pi(a|h) Q_bar(h, a)`` at each reply position."""


def reply_hidden(policy: Policy, batch: TokenBatch) -> torch.Tensor:
    """Eq. 1: the hidden states predicting each reply token, packed. -> (N, d). No |V|-wide head."""
    return policy.hidden(batch.inputs, batch.lower).flatten(0, 1)[batch.pred_pos]


def reply_heads(policy: Policy, batch: TokenBatch, critic: bool = False) -> ReplyHeads:
    """Eq. 1 and the heads at the reply positions only: language head always, online critic when `critic`."""
    h = reply_hidden(policy, batch)  # (N, d)
    logits = policy.lm_logits(h)  # (N, V)
    logp = logits.log_softmax(-1).gather(1, batch.tokens[:, None]).squeeze(1)  # (N,)
    q = policy.q_values(h) if critic else None  # (N, V)
    return ReplyHeads(h=h, logits=logits, logp=logp, q=q, taken=batch.tokens)


@torch.no_grad()
def td_targets(policy: Policy, batch: TokenBatch, heads: ReplyHeads, cfg: LossConfig) -> Targets:
    """Eq. 2 and 6: ``y = r + gamma (1 - d) V_bar(h')`` per reply token (n-step when ``cfg.td_steps > 1``), and
    ``V_bar(h)`` at every reply position, from one pass of the target head over ``[h ; h0']``.

    Inside a reply h' is the next reply token's h (its logits are reused); after the stop token it is
    ``h_{t+1}^0``, from an inference-only pass (eval mode) on the next prompt, run for non-terminal turns only.
    Uses the target critic and PopArt's current statistics to unnormalise its values; changes nothing.
    """
    h, logits = heads.h.detach(), heads.logits.detach()
    N = h.shape[0]
    states, state_logits = [h], [logits]
    if batch.next_inputs is not None:
        was_training = policy.model.training
        policy.model.eval()
        h0 = policy.hidden(batch.next_inputs, batch.next_lower).flatten(0, 1)[batch.next_last_pos]  # (B', d)
        policy.model.train(was_training)
        states.append(h0.to(h.dtype))
        state_logits.append(policy.lm_logits(h0))
    q_bar = policy.popart.denormalize(policy.q_values(torch.cat(states), target=True).float())  # (N + B', V)
    v = losses.expected_value(torch.cat(state_logits), q_bar)  # (N + B',)
    next_v = torch.zeros(N, dtype=v.dtype, device=v.device)
    next_v[:-1] = v[1:N]  # inside a reply: the next reply token of the same turn
    next_v[batch.stop_idx] = 0.0  # after a stop token: 0 when the episode ended ...
    if batch.next_inputs is not None:
        next_v[batch.stop_idx[batch.next_turn_idx]] = v[N:]  # ... else h_{t+1}^0's value
    y = losses.td_target(batch.token_rewards(), batch.token_dones(), next_v, cfg.gamma)  # (N,)
    y = losses.nstep_target(y, batch.turn_idx, cfg.td_steps, cfg.gamma)  # td_steps = 1: Eq. 6 as is
    return Targets(y=y, v_bar=v[:N])


def filter_advantage(
    policy: Policy, heads: ReplyHeads, q: torch.Tensor, targets: Targets, cfg: LossConfig
) -> torch.Tensor:
    """The advantage the filter reads, PopArt-normalised, no gradient: Eq. 5's ``Q(h, a) - V(h)`` (``q``, the
    online critic's values q (N, V)) or ``(y - V_bar(h)) / sigma`` (``td``, ours). -> (N,)."""
    if cfg.advantage == "td":
        return losses.td_advantage(targets.y, targets.v_bar, policy.popart.sigma)
    q_taken = q.gather(1, heads.taken[:, None]).squeeze(1)
    return losses.q_advantage(q_taken, heads.logits, q)


@torch.no_grad()
def token_usage(policy: Policy, heads: ReplyHeads, seen: torch.Tensor, q: torch.Tensor | None) -> losses.Stats:
    """Where the policy's mass and the critic's preferences fall relative to the tokens the data uses (Fig. 5's
    max-Q failure): `seen` (V,) bool marks the tokens of the dataset's replies (stop included); `q` (N, V)
    normalised online Q, or None without a critic. Means over the N reply positions (docs/METRICS.md); masked
    sums rather than boolean indexing, which would wait for the device."""
    unseen = (~seen).float()  # (V,)
    probs = heads.logits.float().softmax(-1)  # (N, V)
    stats: losses.Stats = {"tokens/pi_unseen": (probs @ unseen).mean()}
    if q is not None:
        raw = policy.popart.denormalize(q.float())  # (N, V)
        n_seen, n_unseen = seen.sum(), unseen.sum()
        stats |= {
            "tokens/q_seen": (raw @ seen.float()).sum() / (raw.shape[0] * n_seen),
            "tokens/q_unseen": (raw @ unseen).sum() / (raw.shape[0] * n_unseen),  # NaN when every token is seen
            "tokens/argmax_q_unseen": unseen[raw.argmax(-1)].mean(),
        }
    return stats


def loss_from_heads(
    policy: Policy,
    heads: ReplyHeads,
    targets: Targets | None,
    cfg: LossConfig,
    beta: float,
    seen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, losses.Stats]:
    """Eq. 3-7 from the reply heads and targets, at the policy's current PopArt and whitening state (the online
    critic head runs here, after any rescale). Returns the scalar loss and namespaced statistics (docs/METRICS.md;
    with `seen`, the (V,) bool mask of the data's reply tokens, also :func:`token_usage`'s). `targets` may be None
    only for plain SFT (``cfg.uses_critic`` False)."""
    N = heads.logp.shape[0]
    stats: losses.Stats = {"train/reply_tokens": float(N), "train/beta": beta}
    if not cfg.uses_critic:
        loss, s = losses.sft_loss(heads.logp)
        usage = token_usage(policy, heads, seen, None) if seen is not None else {}
        return loss, stats | s | usage | {"train/loss": loss.detach(), "actor/nll": loss.detach()}
    assert targets is not None, "the critic needs td_targets"

    ## Critic loss (Eq. 6) ##
    q_taken, q = policy.q_taken(heads.h, heads.taken)  # (N,) with gradient, (N, V) without; normalised
    critic_loss, s_critic = losses.critic_loss(q_taken, policy.popart.normalize(targets.y))

    ## Actor loss (Eq. 3 / 4-5 / max-Q) ##
    adv = filter_advantage(policy, heads, q, targets, cfg)  # (N,)
    if cfg.actor == "maxq":
        actor_loss, s_actor = losses.maxq_loss(heads.logits, q)
    else:
        keep = losses.advantage_filter(adv, beta if cfg.actor == "afsft" else -float("inf"))
        actor_loss, s_actor = losses.afsft_loss(heads.logp, keep)

    loss = losses.joint_loss(actor_loss, critic_loss, cfg.critic_weight)  # Eq. 7
    with torch.no_grad():
        q_unnorm = policy.popart.denormalize(q_taken.float())
    usage = token_usage(policy, heads, seen, q) if seen is not None else {}
    return loss, stats | s_critic | s_actor | usage | {
        "train/loss": loss.detach(),
        "critic/q_taken": q_unnorm.mean(),
        "critic/td_target": targets.y.mean(),
        "critic/adv_mean": adv.mean(),
        "critic/adv_std": adv.std() if N > 1 else 0.0,
        "critic/popart_mu": policy.popart.mu.clone(),
        "critic/popart_sigma": policy.popart.sigma,
        "actor/nll": -heads.logp.detach().mean(),
    }


def minibatch_loss(
    policy: Policy, batch: TokenBatch, cfg: LossConfig, beta: float
) -> tuple[torch.Tensor, losses.Stats]:
    """The loss of one minibatch at the policy's current state (Eq. 1-7; pure: no parameter or buffer changes).

    A training step runs the same three parts with the PopArt and whitening updates between the targets and
    the loss (``Trainer.train_step``); this composite is what benchmarks, tests and diagnostics call."""
    heads = reply_heads(policy, batch)
    targets = td_targets(policy, batch, heads, cfg) if cfg.uses_critic else None
    return loss_from_heads(policy, heads, targets, cfg, beta)
