"""What the critic thinks of each reply token: advantages, Q, V, log-probs, the filter mask and the alternatives.

:func:`token_views` turns transitions into :class:`TokenView` records (plain lists, ready for the plots in
:mod:`vlmq_core.plots` and the inspector in :mod:`vlmq_core.widgets`); :func:`filter_summary` counts what the
filter keeps over a dataset, by the groups of :data:`FILTER_GROUPS`;
:func:`token_usage_summary` measures the policy mass and Q-values off the data's tokens (the max-Q ablation).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from vlmq_core import losses
from vlmq_core.losses import LossConfig
from vlmq_core.model import Policy
from vlmq_core.objective import filter_advantage, reply_heads, td_targets, token_usage
from vlmq_core.tokens import build_batch
from vlmq_core.turns import Transition, Turn

FILTER_GROUPS = {
    "all": "every reply token",
    "format": "valid replies, all but the action token",
    "action_good": "action token of good moves (turn reward >= 0)",
    "action_bad": "action token of bad moves (turn reward < 0)",
    "invalid": "tokens of invalid replies",
}
"""The token groups :func:`filter_summary` reports (``filter/kept_<group>``) and the inspector filters by."""

ADVANTAGE_NAMES = {"q": "Q(h, a) − V(h)", "td": "y − V̄(h)"}
"""``LossConfig.advantage`` -> the name of the advantage the filter reads, as the figures label it."""


@dataclass
class TokenView:
    """What the critic thinks of one reply (one turn), token by token; the stop token comes last.

    Units: ``advantage`` is in the filter's units (PopArt-normalised: what ``beta`` is compared with); every other
    number is in return units (unnormalised), and ``advantage[j] * sigma`` is the advantage in return units.
    """

    tokens: list[str]
    """The reply's tokens, decoded one by one."""
    advantage: list[float]
    """The advantage the filter reads (PopArt-normalised): ``Q - V`` (Eq. 5) or ``(y - V_bar) / sigma``."""
    q_taken: list[float]
    """Q(h, a) of the online critic, return units."""
    value: list[float]
    """The V the advantage subtracts, return units: the online critic's V(h), or the target's V_bar(h) with td."""
    logp: list[float]
    """log pi(a | h)."""
    kept: list[bool]
    """The Eq. 4 mask at ``beta``."""
    prompt: str
    reply: str
    reward: float
    title: str = ""
    td_target: list[float] | None = None
    """The taken token's TD target y (return units) when the filter read ``y - V_bar`` (``LossConfig.advantage``)."""
    beta: float = 0.0
    """The threshold ``kept`` was computed at."""
    sigma: float = 1.0
    """PopArt's sigma when the view was made: advantage in return units = ``advantage * sigma``."""
    advantage_name: str = ADVANTAGE_NAMES["q"]
    """Which advantage ``advantage`` is (:data:`ADVANTAGE_NAMES`)."""
    top_pi: list[list[tuple[str, float, float]]] | None = None
    """Per position, the top-k tokens by policy probability: (token, pi, Q in return units)."""
    top_q: list[list[tuple[str, float, float]]] | None = None
    """Per position, the top-k tokens by online Q: (token, pi, Q in return units)."""
    rank_pi: list[int] | None = None
    """Per position, the taken token's rank under pi (1 = the policy's favourite)."""
    rank_q: list[int] | None = None
    """Per position, the taken token's rank under the online Q (1 = the critic's favourite)."""
    source: str = ""
    strategy: str = ""
    valid: bool = True
    episode_id: str = ""
    t: int = 0
    image: bytes | None = field(default=None, repr=False)
    """The turn's image (PNG bytes), None for text-only turns."""
    next_obs: str | None = None
    """The next turn's observation text; None when this turn ends the episode."""
    return_to_go: float | None = None
    """Undiscounted sum of this turn's and the later turns' rewards, when the episode was given."""
    episode_length: int | None = None
    previous_reply: str | None = None
    """The reply of turn t - 1 of the episode, when the episode was given and t > 0."""

    def __post_init__(self) -> None:
        n = len(self.tokens)
        for name in (
            "advantage",
            "q_taken",
            "value",
            "logp",
            "kept",
            "td_target",
            "top_pi",
            "top_q",
            "rank_pi",
            "rank_q",
        ):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise ValueError(f"TokenView.{name} has {len(getattr(self, name))} entries, tokens has {n}")

    def kept_at(self, beta: float) -> list[bool]:
        """The Eq. 4 mask ``A >= beta`` at another threshold (what a beta slider shows)."""
        return [a >= beta for a in self.advantage]

    @property
    def action_index(self) -> int | None:
        """Position of the action token (the last one before the stop token) of a valid reply, else None."""
        return len(self.tokens) - 2 if self.valid and len(self.tokens) >= 2 else None

    def action_masked(self, beta: float) -> bool:
        """A valid reply whose action token the filter masks at `beta` (a move the critic judged bad)."""
        return self.action_index is not None and not self.kept_at(beta)[self.action_index]

    def groups(self, beta: float) -> dict[str, list[bool]]:
        """This reply's tokens' kept flags at `beta`, by :data:`FILTER_GROUPS` (empty groups left out)."""
        kept = self.kept_at(beta)
        out: dict[str, list[bool]] = {"all": kept}
        if not self.valid:
            out["invalid"] = kept
            return out
        action = self.action_index
        out["format"] = [k for j, k in enumerate(kept) if j != action]
        if action is not None:
            out["action_good" if self.reward >= 0 else "action_bad"] = [kept[action]]
        return out


def group_kept(views: list[TokenView], beta: float) -> dict[str, tuple[float, int]]:
    """Per :data:`FILTER_GROUPS` group: (kept fraction at `beta`, token count) over `views`; NaN when empty."""
    pooled: dict[str, list[bool]] = {k: [] for k in FILTER_GROUPS}
    for view in views:
        for k, flags in view.groups(beta).items():
            pooled[k] += flags
    return {k: (sum(v) / len(v) if v else float("nan"), len(v)) for k, v in pooled.items()}


def _ranked(probs: torch.Tensor, q: torch.Tensor, index: torch.Tensor, decode) -> list[tuple[str, float, float]]:
    return [(decode(int(i)), float(probs[i]), float(q[i])) for i in index]


@torch.no_grad()
def token_views(
    policy: Policy,
    transitions: list[Transition],
    beta: float = 0.0,
    loss: LossConfig | None = None,
    top_k: int = 5,
    episodes: dict[str, list[Turn]] | None = None,
    chunk: int = 8,
) -> list[TokenView]:
    """One :class:`TokenView` per turn, as the filter of `loss` sees it at the policy's current state: per reply
    token (stop token last) its advantage (``Q - V`` by default (Eq. 5), ``(y - V_bar) / sigma`` with
    ``loss.advantage == "td"``), Q(h, a), the V that advantage subtracts, the TD target y (``td`` only),
    log pi(a|h), the Eq. 4 mask at `beta`, and the `top_k` alternatives by pi and by Q with the taken token's
    ranks (none with ``top_k=0``). With `episodes` (``TurnBuffer.episodes()``) each view also gets its
    return-to-go and the previous reply. `chunk` turns go through the model at a time. Changes nothing."""
    loss = loss or LossConfig()
    views: list[TokenView] = []
    with _inference(policy):
        for start in range(0, len(transitions), chunk):
            views += _views_of(policy, transitions[start : start + chunk], beta, loss, top_k, episodes)
    return views


def _views_of(
    policy: Policy,
    transitions: list[Transition],
    beta: float,
    loss: LossConfig,
    top_k: int,
    episodes: dict[str, list[Turn]] | None,
) -> list[TokenView]:
    batch = build_batch(policy, transitions)
    heads = reply_heads(policy, batch, critic=True)
    targets = td_targets(policy, batch, heads, loss)
    adv = filter_advantage(policy, heads, heads.q, targets, loss)  # (N,)
    keep = losses.advantage_filter(adv, beta)
    q_all = policy.popart.denormalize(heads.q.float())  # (N, V) return units
    taken = batch.tokens[:, None]
    q_un = q_all.gather(1, taken).squeeze(1)
    if top_k:  # the alternatives and ranks (filter_summary needs none of it)
        probs = heads.logits.float().softmax(-1)  # (N, V)
        rank_pi = (probs > probs.gather(1, taken)).sum(-1) + 1  # (N,)
        rank_q = (q_all > q_all.gather(1, taken)).sum(-1) + 1
        k = min(top_k, probs.shape[1])
        by_pi, by_q = probs.topk(k, -1).indices, q_all.topk(k, -1).indices  # (N, k)
    td = loss.advantage == "td"
    v_un = targets.v_bar if td else policy.popart.denormalize(losses.expected_value(heads.logits, heads.q))
    decode = lambda i: policy.tokenizer.decode([i])  # noqa: E731
    views = []
    for b, (turn, nxt) in enumerate(transitions):
        idx = (batch.turn_idx == b).nonzero().squeeze(1)
        episode = episodes.get(turn.episode_id) if episodes else None
        rest = [x.reward for x in episode if x.t >= turn.t] if episode else None
        previous = [x.reply for x in episode if x.t == turn.t - 1] if episode else []
        views.append(
            TokenView(
                tokens=[decode(int(t)) for t in batch.tokens[idx]],
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
                beta=beta,
                sigma=float(policy.popart.sigma),
                advantage_name=ADVANTAGE_NAMES[loss.advantage],
                top_pi=[_ranked(probs[j], q_all[j], by_pi[j], decode) for j in idx.tolist()] if top_k else None,
                top_q=[_ranked(probs[j], q_all[j], by_q[j], decode) for j in idx.tolist()] if top_k else None,
                rank_pi=rank_pi[idx].tolist() if top_k else None,
                rank_q=rank_q[idx].tolist() if top_k else None,
                source=turn.source,
                strategy=turn.strategy,
                valid=turn.valid,
                episode_id=turn.episode_id,
                t=turn.t,
                image=turn.image,
                next_obs=nxt.obs if nxt is not None else None,
                return_to_go=sum(rest) if rest else None,
                episode_length=len(episode) if episode else None,
                previous_reply=previous[0] if previous else None,
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
    """What the AFSFT filter (Eq. 4) keeps on `transitions`, split the way that shows whether it helps
    (:data:`FILTER_GROUPS`):

    - ``filter/kept_all``: every reply token;
    - ``filter/kept_format``: tokens of valid replies other than the action token (formatting + stop token);
    - ``filter/kept_action_good`` / ``filter/kept_action_bad``: the action token (the last one before the stop
      token) of valid replies whose turn reward is >= 0 / < 0 (a good filter keeps the first, drops the second);
    - ``filter/kept_invalid``: tokens of invalid replies.
    NaN where a group is empty. ``loss`` picks the advantage the filter reads (``LossConfig.advantage``).
    """
    views = token_views(policy, transitions, beta, loss, top_k=0, chunk=chunk)
    return {f"filter/kept_{k}": frac for k, (frac, _) in group_kept(views, beta).items()}


@contextmanager
def _inference(policy: Policy) -> Iterator[None]:
    """The policy in eval mode (no dropout, no running statistics updated) and no gradients inside; its previous
    mode restored after."""
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        policy.train(was_training)


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
                sums[k] = sums.get(k, 0.0) + float(v) * batch.num_tokens
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
