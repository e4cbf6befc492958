"""One minibatch of VLM Q-Learning: forward passes, TD targets, critic and actor losses.

Pseudo-code of :func:`compute_loss` (METHOD.md)::

    h      = f_theta([p_t ; a_t ; stop])[reply positions]          # Eq. 1, (N, d)
    h0'    = stopgrad(f_theta(p_{t+1}))[-1]                        # Eq. 2, one per non-terminal turn
    h'     = h shifted by one inside each reply, h0' after the stop token
    y      = r + gamma (1 - d) sum_a' pi(a'|h') Q_bar(h', a')       # Eq. 6 target, target head, PopArt space
    y      = gamma^(m-1) y[j + m - 1], m = min(td_steps, l - j)     # optional n-step inside a reply (ours)
    PopArt.update(y)                                               # rescales critic + target outputs
    Q(h)   = critic((h - m) W)                                     # optional input whitening (ours)
    L_Q    = mean (Q(h, a) - normalise(y))^2                        # Eq. 6
    A      = Q(h, a) - sum_a pi(a|h) Q(h, a)                        # advantage, no gradient (Eq. 5)
           | normalise(y) - sum_a pi(a|h) Q_bar(h, a)               # advantage = "td" (ours)
    L_act  = - sum 1[A >= beta] log pi(a|h) / N                     # Eq. 4-5 (beta = -inf: Eq. 3)
    L      = L_act + lambda L_Q                                     # Eq. 7 (critic_trains_backbone=False:
                                                                   #   L_Q sees stopgrad(h), ours)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmq_core import losses
from vlmq_core.model import Policy
from vlmq_core.replay import CriticReplay
from vlmq_core.tokens import TokenBatch


@dataclass
class LossConfig:
    """Which actor loss and how the critic is trained (METHOD.md, "Losses")."""

    actor: str = "afsft"
    """``afsft`` (Eq. 4-5), ``sft`` (Eq. 3) or ``maxq`` (the ablation actor)."""
    gamma: float = 0.995
    """Discount per token transition."""
    critic_weight: float = 1.0
    """lambda of Eq. 7. With actor ``sft`` and 0 the critic is skipped entirely (plain SFT, no extra pass)."""
    filter_start_step: int = 0
    """Updates with beta = -inf (pure SFT) before the advantage filter switches on."""
    beta: float = 0.0
    """Filter threshold after the start (in PopArt-normalised advantage units)."""
    beta_ramp_steps: int = 0
    """If > 0, beta rises linearly from ``beta_ramp_from`` to ``beta`` over this many updates."""
    beta_ramp_from: float = -1.0
    """Start of the optional linear ramp."""
    td_steps: int = 1
    """Token transitions before the critic target bootstraps inside a reply (``losses.nstep_target``). 1 is
    Eq. 6; a value above the longest reply gives every reply token the turn's target (r_t + the next turn)."""

    advantage: str = "q"
    """Advantage the filter reads: ``q`` is the paper's ``Q(h, a) - V(h)`` (Eq. 5); ``td`` is ``y - V_bar(h)`` with
    y the taken token's (n-step) TD target and V_bar the target critic's value, the TD error of the target critic
    (``losses.td_advantages``; ours, see docs/PAPER_MAP.md)."""
    critic_trains_backbone: bool = True
    """Eq. 7 as in the paper: the critic loss's gradient reaches LoRA as well as the critic head. False stops it
    at the hidden states (the critic head reads ``h.detach()``), so LoRA learns from the actor loss alone (ours,
    README finding 8)."""

    def __post_init__(self) -> None:
        if self.advantage not in ("q", "td"):
            raise ValueError(f"LossConfig.advantage must be 'q' (Eq. 5) or 'td', not {self.advantage!r}")
        if self.actor not in ("afsft", "sft", "maxq"):
            raise ValueError(f"LossConfig.actor must be 'afsft', 'sft' or 'maxq', not {self.actor!r}")
        if self.td_steps < 1:
            raise ValueError(f"LossConfig.td_steps must be >= 1 (1 is Eq. 6), not {self.td_steps}")

    @property
    def uses_critic(self) -> bool:
        return not (self.actor == "sft" and self.critic_weight == 0)


@dataclass
class Forward:
    """What one forward pass computes at the reply tokens (used by the losses and by the plots)."""

    logp: torch.Tensor
    """(N,) log pi(a^{j+1} | h^j)."""
    logits: torch.Tensor
    """(N, V) language-head logits."""
    q: torch.Tensor | None
    """(N, V) normalised Q-values of the online critic (None without a critic)."""
    h: torch.Tensor
    """(N, d) hidden states h^j."""


def reply_hidden(policy: Policy, batch: TokenBatch) -> torch.Tensor:
    """Eq. 1: the hidden states predicting each reply token, packed. -> (N, d)."""
    return policy.hidden(batch.inputs).flatten(0, 1)[batch.pred_pos]


def forward_reply(policy: Policy, batch: TokenBatch, with_critic: bool) -> Forward:
    """Eq. 1: the hidden states predicting each reply token, and both heads on them only."""
    h = reply_hidden(policy, batch)  # (N, d)
    logits = policy.lm_logits(h)  # (N, V)
    logp = logits.log_softmax(-1).gather(1, batch.tokens[:, None]).squeeze(1)  # (N,)
    q = policy.q_values(h) if with_critic else None
    return Forward(logp=logp, logits=logits, q=q, h=h)


@torch.no_grad()
def next_state_values(policy: Policy, batch: TokenBatch, fwd: Forward) -> torch.Tensor:
    """``V_bar(h') = sum_a' pi(a'|h') Q_bar(h', a')`` for every reply token, unnormalised. -> (N,).

    Inside a reply h' is the next reply token's h (its logits are reused); after the stop token it is
    h_{t+1}^0 from an inference-only pass on the next prompt (Eq. 2), run only for non-terminal turns.
    """
    N, d = fwd.h.shape
    h_next = torch.zeros_like(fwd.h)  # (N, d)
    logits_next = torch.zeros_like(fwd.logits)  # (N, V)
    inner = ~batch.is_last
    inner_idx = inner.nonzero().squeeze(1)
    h_next[inner_idx] = fwd.h[inner_idx + 1].detach()
    logits_next[inner_idx] = fwd.logits[inner_idx + 1].detach()
    if batch.next_inputs is not None:
        was_training = policy.model.training
        policy.model.eval()
        h0 = policy.hidden(batch.next_inputs).flatten(0, 1)[batch.next_last_pos]  # (B', d)
        policy.model.train(was_training)
        last_idx = batch.is_last.nonzero().squeeze(1)  # (B,) stop token of each turn, in turn order
        rows = last_idx[batch.next_turn_idx]  # (B',)
        h_next[rows] = h0.to(h_next.dtype)
        logits_next[rows] = policy.lm_logits(h0)
    q_bar = policy.popart.denormalize(policy.q_values(h_next, target=True).float())  # (N, V)
    v = losses.expected_value(logits_next, q_bar)  # (N,)
    return v * (1.0 - batch.token_dones())  # terminal rows hold zeros anyway; keep them exactly 0


@torch.no_grad()
def td_targets(policy: Policy, batch: TokenBatch, fwd: Forward, cfg: LossConfig) -> torch.Tensor:
    """Eq. 6 targets ``y = r + gamma (1 - d) V_bar(h')`` of every reply token, unnormalised, in their n-step form
    when ``cfg.td_steps > 1`` (``losses.nstep_target``). -> (N,)."""
    next_v = next_state_values(policy, batch, fwd)
    y = losses.td_target(batch.token_rewards(), batch.token_dones(), next_v, cfg.gamma)  # (N,)
    return losses.nstep_target(y, batch.turn_idx, cfg.td_steps, cfg.gamma)  # td_steps = 1: Eq. 6 as is


def advantages(
    policy: Policy,
    batch: TokenBatch,
    fwd: Forward,
    q: torch.Tensor,
    q_taken: torch.Tensor,
    cfg: LossConfig,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """The filter's advantage of each taken token, PopArt-normalised, no gradient: ``Q(h, a) - V(h)`` (Eq. 5) or,
    with ``cfg.advantage == "td"``, ``normalise(y) - V_bar(h)`` (y: the unnormalised targets of :func:`td_targets`,
    computed here when not given; V_bar from the target critic, like y's bootstrap).
    q: (N, V) normalised; q_taken: (N,) -> (N,)."""
    if cfg.advantage == "td":  # y and V both from the target critic: its lag cancels (PAPER_MAP)
        y = td_targets(policy, batch, fwd, cfg) if y is None else y
        with torch.no_grad():
            q_bar = policy.q_values(fwd.h, target=True).float()  # (N, V) normalised
        return losses.td_advantages(policy.popart.normalize(y.float()), fwd.logits, q_bar)
    return losses.advantages(q_taken, fwd.logits, q)


def compute_loss(
    policy: Policy, batch: TokenBatch, cfg: LossConfig, beta: float, replay: CriticReplay | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 7 for one minibatch. Returns the scalar loss and namespaced statistics. With ``replay`` the reply
    hidden states and their targets are also stored for critic-only steps (``vlmq_core.replay``)."""
    stats: dict[str, float] = {"train/reply_tokens": float(batch.num_tokens), "train/beta": beta}
    if not cfg.uses_critic:
        fwd = forward_reply(policy, batch, with_critic=False)
        loss, s = losses.sft_loss(fwd.logp)
        return loss, stats | s | {"train/loss": loss.item(), "actor/nll": loss.item()}

    ## TD targets (Eq. 6) ##
    fwd = forward_reply(policy, batch, with_critic=False)
    y = td_targets(policy, batch, fwd, cfg)  # (N,) unnormalised
    policy.popart.update(y, [policy.critic, policy.target_critic])
    if policy.cfg.critic.whiten_every:  # running input statistics, only read by the trainer's refreshes
        policy.whiten.observe(fwd.h)
    if replay is not None:
        replay.add(fwd.h, batch.tokens, y, batch.turn_idx)

    ## Critic loss (after PopArt rescaled the heads) ##
    q = policy.q_values(fwd.h if cfg.critic_trains_backbone else fwd.h.detach())  # (N, V) normalised
    q_taken = q.gather(1, batch.tokens[:, None]).squeeze(1)  # (N,)
    critic_loss, s_critic = losses.critic_loss(q_taken, policy.popart.normalize(y))

    ## Actor loss (Eq. 3 / 4-5 / max-Q) ##
    adv = advantages(policy, batch, fwd, q, q_taken, cfg, y)  # (N,)
    if cfg.actor == "maxq":
        actor_loss, s_actor = losses.maxq_loss(fwd.logits, q)
    else:
        keep = losses.advantage_filter(adv, beta if cfg.actor == "afsft" else -float("inf"))
        actor_loss, s_actor = losses.afsft_loss(fwd.logp, keep)

    loss = losses.joint_loss(actor_loss, critic_loss, cfg.critic_weight)  # Eq. 7
    with torch.no_grad():
        q_unnorm = policy.popart.denormalize(q_taken.float())
    stats |= s_critic | s_actor
    stats |= {
        "train/loss": loss.item(),
        "critic/q_taken": q_unnorm.mean().item(),
        "critic/td_target": y.mean().item(),
        "critic/adv_mean": adv.mean().item(),
        "critic/adv_std": adv.std().item() if adv.numel() > 1 else 0.0,
        "critic/popart_mu": policy.popart.mu.item(),
        "critic/popart_sigma": policy.popart.sigma.item(),
        "actor/nll": -fwd.logp.mean().item(),
    }
    return loss, stats
