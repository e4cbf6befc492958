"""The loss of a minibatch (METHOD.md Eq. 1-7 wired together): pure, what its gradient moves and what it must
not, the TD targets and both advantages."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import make_policy, randomize_lora, transitions
from vlmq_core import losses
from vlmq_core.config import ConfigError
from vlmq_core.inspector import token_views
from vlmq_core.losses import LossConfig
from vlmq_core.model import Policy
from vlmq_core.objective import minibatch_loss, reply_heads, td_targets
from vlmq_core.tokens import build_batch


def compute_loss(policy, batch, cfg: LossConfig, beta: float):
    return minibatch_loss(policy, batch, cfg, beta)


def state_of(policy: Policy) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the policy (model, critic, target, PopArt, whitening), cloned."""
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "idefics3"])
@pytest.mark.parametrize("kind", ["afsft-q", "afsft-td", "maxq", "sft"])
def test_the_loss_is_pure(request, family, kind):
    """The loss of a minibatch changes nothing: twice on the same batch, the same loss and statistics, and every
    parameter and buffer of the policy (LoRA, critic, target, PopArt, whitening) exactly as before."""
    from vlmq_core.critic import CriticConfig
    from vlmq_core.model import PolicyConfig

    policy = make_policy(family, cfg=PolicyConfig(critic=CriticConfig(hidden=32, whiten=True)))
    randomize_lora(policy)
    with torch.no_grad():  # a refreshed whitening and moved PopArt statistics, as mid-run
        policy.whiten.observe(torch.randn(50, policy.critic.net[0].in_features), exact=True)
        policy.whiten.refresh([policy.critic, policy.target_critic])
        policy.popart.mu.fill_(-2.0)
    policy.eval()
    actor, _, advantage = kind.partition("-")
    cfg = LossConfig(actor=actor, advantage=advantage or "q", critic_weight=0.0 if actor == "sft" else 1.0, td_steps=3)
    batch = build_batch(policy, transitions(turns_of(request, family)))
    before = state_of(policy)
    first, stats1 = compute_loss(policy, batch, cfg, beta=0.0)
    first.backward()  # a gradient is allowed; the optimizer (not the loss) applies it
    second, stats2 = compute_loss(policy, batch, cfg, beta=0.0)
    assert first.item() == second.item() and stats1 == stats2
    after = state_of(policy)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed


FAMILIES = ["llama", "idefics3", "llava"]


def turns_of(request, family: str):
    return request.getfixturevalue("text_turns" if family == "llama" else "image_turns")


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, bool]:
    return {n: not torch.equal(before[n], p) for n, p in module.named_parameters()}


def optimizer(policy, lr: float = 1e-2) -> torch.optim.AdamW:
    groups = policy.trainable_parameters()
    return torch.optim.AdamW([{"params": groups["lora"]}, {"params": groups["critic"]}], lr=lr, weight_decay=0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_train_step_moves_every_lora_and_critic_parameter_and_no_base(request, family):
    policy = make_policy(family)
    policy.train()
    batch = build_batch(policy, transitions(turns_of(request, family)))
    cfg = LossConfig(actor="afsft", beta=0.0)
    opt = optimizer(policy)
    base0 = {n: p for n, p in snapshot(policy.model).items() if "lora_" not in n}
    lora0 = {n: p for n, p in snapshot(policy.model).items() if "lora_" in n}
    critic0 = snapshot(policy.critic)
    # LoRA B starts at zero, so step 1 moves only B (A's gradient is B^T(...) = 0); step 2 moves A too.
    # (The optimizer alone moves parameters here; Trainer.train_step adds PopArt, whitening and the EMA.)
    for step in range(2):
        opt.zero_grad()
        loss, stats = compute_loss(policy, batch, cfg, beta=0.0)
        assert torch.isfinite(loss)
        loss.backward()
        for n, p in policy.model.named_parameters():
            if "lora_" in n:
                if step == 1 or "lora_B" in n:
                    assert p.grad is not None and p.grad.abs().sum() > 0, n
            else:
                assert p.grad is None, n
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.critic.parameters())
        assert all(p.grad is None for p in policy.target_critic.parameters())
        target_before_step = snapshot(policy.target_critic)
        opt.step()
        assert not any(changed(target_before_step, policy.target_critic).values())  # optimizer leaves it alone
    moved = {n: not torch.equal(lora0[n], p) for n, p in policy.model.named_parameters() if "lora_" in n}
    assert moved and all(moved.values()), [n for n, m in moved.items() if not m]
    assert any("lora_A" in n for n in moved) and any("lora_B" in n for n in moved)
    assert all(changed(critic0, policy.critic).values())
    base_now = {n: p for n, p in policy.model.named_parameters() if "lora_" not in n}
    assert base_now.keys() == base0.keys()
    assert all(torch.equal(base0[n], p) for n, p in base_now.items())
    if family != "llama":
        assert any(k in n for n in base0 for k in ("vision_model", "vision_tower"))  # the frozen tower is compared too


@pytest.mark.parametrize("actor", ["afsft", "sft", "maxq"])
def test_stats_keys(text_turns, actor):
    policy = make_policy("llama")
    batch = build_batch(policy, transitions(text_turns))
    loss, stats = compute_loss(policy, batch, LossConfig(actor=actor), beta=0.0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    for key in (
        "train/loss",
        "train/reply_tokens",
        "train/beta",
        "actor/kept_frac",
        "critic/loss",
        "critic/td_target",
        "critic/popart_mu",
        "critic/popart_sigma",
        "critic/adv_mean",
        "actor/nll",
    ):
        assert key in stats, key
    assert 0.0 <= stats["actor/kept_frac"] <= 1.0
    assert stats["train/reply_tokens"] == batch.num_tokens
    assert stats["train/loss"] == pytest.approx(loss.item())
    for k, v in stats.items():  # numbers, or 0-dim tensors left on the device until the trainer writes the row
        assert isinstance(v, float) or (isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad), k
    if actor == "afsft":
        assert 0.0 < stats["actor/kept_frac"] < 1.0  # the filter at beta=0 keeps some tokens, not all


def test_sft_without_critic_gives_critic_no_gradient(text_turns):
    policy = make_policy("llama")
    batch = build_batch(policy, transitions(text_turns))
    loss, stats = compute_loss(policy, batch, LossConfig(actor="sft", critic_weight=0.0), beta=0.0)
    loss.backward()
    assert all(p.grad is None for p in policy.critic.parameters())
    assert any(p.grad is not None for p in policy.trainable_parameters()["lora"])
    assert "critic/loss" not in stats and stats["actor/kept_frac"] == 1.0


def lora_grads(policy, batch, cfg: LossConfig, beta: float) -> dict[str, torch.Tensor]:
    policy.zero_grad(set_to_none=True)
    loss, stats = compute_loss(policy, batch, cfg, beta)
    loss.backward()
    return {n: p.grad.clone() for n, p in policy.model.named_parameters() if "lora_" in n}, stats


def test_afsft_with_beta_minus_inf_has_the_sft_gradient(text_turns):
    policy = make_policy("llama")
    randomize_lora(policy)  # non-zero B, so every LoRA matrix gets a gradient
    policy.eval()  # no dropout: both passes see the same network
    batch = build_batch(policy, transitions(text_turns))
    g_sft, _ = lora_grads(policy, batch, LossConfig(actor="sft", critic_weight=0.0), beta=0.0)
    g_af, s_af = lora_grads(policy, batch, LossConfig(actor="afsft", critic_weight=0.0), beta=-math.inf)
    assert s_af["actor/kept_frac"] == 1.0
    assert all(g.abs().sum() > 0 for g in g_sft.values())
    for n in g_sft:
        torch.testing.assert_close(g_af[n], g_sft[n], atol=1e-6, rtol=1e-5)
    # and the filter does something: at beta=+inf no token is kept, the actor gradient vanishes
    g_none, s_none = lora_grads(policy, batch, LossConfig(actor="afsft", critic_weight=0.0), beta=math.inf)
    assert s_none["actor/kept_frac"] == 0.0
    assert all(g.abs().max() == 0 for g in g_none.values())


def v_bar_of(policy: Policy, h: torch.Tensor) -> torch.Tensor:
    """Unnormalised ``sum_a pi(a|h) Q_bar(h, a)`` by hand. (n, d) -> (n,)."""
    logits = policy.lm_logits(h)
    q = policy.popart.denormalize(policy.q_values(h, target=True))
    return (logits.softmax(-1) * q).sum(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_td_targets_match_a_manual_computation(request, family):
    """Eq. 2 and 6 by hand: inside a reply y = gamma V_bar(next reply token's h); after the stop token
    y = r + gamma V_bar(h_{t+1}^0) from the next prompt run alone, or r when the turn is terminal; and V_bar(h)
    at every reply position, all from the target critic."""
    policy = make_policy(family)
    randomize_lora(policy)
    with torch.no_grad():
        for p in policy.target_critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
        policy.popart.mu.fill_(0.5)
    policy.eval()
    turns = turns_of(request, family)
    trans = transitions(turns)
    batch = build_batch(policy, trans)
    gamma = 0.9
    with torch.no_grad():
        heads = reply_heads(policy, batch)
        targets = td_targets(policy, batch, heads, LossConfig(gamma=gamma))
        torch.testing.assert_close(targets.v_bar, v_bar_of(policy, heads.h), atol=1e-4, rtol=1e-4)
        for b, (turn, nxt) in enumerate(trans):
            idx = (batch.turn_idx == b).nonzero().squeeze(1)
            inner = gamma * v_bar_of(policy, heads.h[idx[1:]])
            torch.testing.assert_close(targets.y[idx[:-1]], inner, atol=1e-4, rtol=1e-4)
            if turn.done:
                assert targets.y[idx[-1]].item() == pytest.approx(turn.reward)
            else:  # after the stop token: the last state of the next prompt, run alone
                alone = build_batch(policy, [(nxt, None if nxt.done else turns[b + 2])])
                h0 = policy.hidden(alone.inputs).flatten(0, 1)[alone.pred_pos[0]]  # the next prompt's last position
                want = turn.reward + gamma * v_bar_of(policy, h0[None])[0]
                torch.testing.assert_close(targets.y[idx[-1]], want, atol=1e-4, rtol=1e-4)


def test_target_critic_used_for_bootstrap(text_turns):
    """Changing the online critic changes neither y nor V_bar; changing the target critic does."""
    policy = make_policy("llama")
    policy.eval()
    batch = build_batch(policy, transitions(text_turns))
    cfg = LossConfig()
    with torch.no_grad():
        heads = reply_heads(policy, batch)
        t0 = td_targets(policy, batch, heads, cfg)
        policy.critic.last.bias.add_(5.0)
        t1 = td_targets(policy, batch, heads, cfg)
        assert torch.equal(t1.y, t0.y) and torch.equal(t1.v_bar, t0.v_bar)
        policy.target_critic.last.bias.add_(1.0)
        t2 = td_targets(policy, batch, heads, cfg)
    sigma = policy.popart.sigma.item()
    torch.testing.assert_close(t2.v_bar, t0.v_bar + sigma, atol=1e-4, rtol=1e-4)
    live = batch.token_dones() == 0
    torch.testing.assert_close(t2.y[live], t0.y[live] + cfg.gamma * sigma, atol=1e-4, rtol=1e-4)


def test_critic_loss_reaches_lora(text_turns):
    """Eq. 7: the critic term trains LoRA too (shared backbone): with the filter dropping every token the
    actor term is zero, yet every LoRA matrix gets a gradient through the critic."""
    policy = make_policy("llama")
    randomize_lora(policy)
    policy.eval()
    batch = build_batch(policy, transitions(text_turns))
    grads, stats = lora_grads(policy, batch, LossConfig(actor="afsft", critic_weight=1.0), beta=math.inf)
    assert stats["actor/kept_frac"] == 0.0
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_nstep_targets_in_the_loss(text_turns):
    """``td_steps`` above the longest reply: every reply token's target is its turn's stop-token target,
    discounted by its distance to it (seen through the mean target the loss logs); 1 is Eq. 6."""
    policy = make_policy("llama")
    policy.eval()
    batch = build_batch(policy, transitions(text_turns))
    gamma = 0.9
    with torch.no_grad():
        y1 = td_targets(policy, batch, reply_heads(policy, batch), LossConfig(gamma=gamma)).y
    stop = y1[batch.is_last][batch.turn_idx]  # (N,) the turn's stop-token target, per token
    last_pos = torch.nonzero(batch.is_last).squeeze(1)[batch.turn_idx]
    expected = gamma ** (last_pos - torch.arange(batch.num_tokens)).float() * stop
    means = {n: compute_loss(policy, batch, LossConfig(td_steps=n, gamma=gamma), 0.0)[1] for n in (1, 1000)}
    assert means[1]["critic/td_target"] == pytest.approx(y1.mean().item(), rel=1e-5, abs=1e-5)
    assert means[1000]["critic/td_target"] == pytest.approx(expected.mean().item(), rel=1e-5, abs=1e-5)
    assert float(means[1000]["critic/td_target"]) != pytest.approx(float(means[1]["critic/td_target"]), rel=1e-3)
    with pytest.raises(ConfigError, match="td_steps"):
        LossConfig(td_steps=0)


def test_td_advantage_is_target_minus_value(text_turns):
    """``advantage="td"``: the filter reads normalise(y) - V_bar(h), y the taken token's Eq. 6 target and V_bar
    the target critic's value, instead of Q(h, a) - V(h); checked against a manual computation in the views, and
    after a PopArt update as a training step makes it (V_bar from before the rescale, divided by the new sigma,
    is exactly the rescaled target head's normalised value)."""
    from vlmq_core.critic import PopArt
    from vlmq_core.objective import loss_from_heads

    policy = make_policy("llama")
    policy.eval()
    with torch.no_grad():  # a target critic that differs from the online one
        bias = policy.target_critic.last.bias
        bias.add_(0.5 + torch.randn(bias.shape, generator=torch.Generator().manual_seed(1)))
    trans = transitions(text_turns)
    batch = build_batch(policy, trans)
    with torch.no_grad():
        heads = reply_heads(policy, batch, critic=True)
        y = td_targets(policy, batch, heads, LossConfig()).y
        v = losses.expected_value(heads.logits, heads.q)
        v_bar = losses.expected_value(heads.logits, policy.q_values(heads.h, target=True))
        q_taken = heads.q.gather(1, batch.tokens[:, None]).squeeze(1)
    assert not torch.allclose(v, v_bar, atol=1e-3)
    expected = {"td": policy.popart.normalize(y) - v_bar, "q": q_taken - v}
    value = {"td": v_bar, "q": v}  # the views show the V each advantage subtracts, and y with "td"
    for kind, want in expected.items():
        views = token_views(policy, trans, loss=LossConfig(advantage=kind))
        got = torch.tensor([a for view in views for a in view.advantage])
        assert torch.allclose(got, want, atol=1e-5), kind
        shown_v = torch.tensor([x for view in views for x in view.value])
        assert torch.allclose(shown_v, policy.popart.denormalize(value[kind]), atol=1e-4), kind
        if kind == "td":
            assert torch.allclose(torch.tensor([x for view in views for x in view.td_target]), y, atol=1e-5)
        else:
            assert all(view.td_target is None for view in views)
    assert not torch.allclose(expected["td"], expected["q"], atol=1e-3)
    # as in a training step: targets, then PopArt moves (rescaling both heads), then the loss filters
    cfg = LossConfig(advantage="td")
    beta = float(expected["td"].median())
    with torch.no_grad():
        heads = reply_heads(policy, batch)
        targets = td_targets(policy, batch, heads, cfg)
        policy.popart.update(PopArt.sums(targets.y * 3.0), 0.3, [policy.critic, policy.target_critic])
        v_bar_new = losses.expected_value(heads.logits, policy.q_values(heads.h, target=True))  # normalised, rescaled
        adv = policy.popart.normalize(targets.y) - v_bar_new
        _, stats = loss_from_heads(policy, heads, targets, cfg, beta)
    assert float(stats["actor/kept_frac"]) == pytest.approx((adv >= beta).float().mean().item())
    assert 0.0 < float(stats["actor/kept_frac"]) < 1.0
    with pytest.raises(ConfigError, match="advantage"):
        LossConfig(advantage="gae")


def test_token_usage_against_a_manual_computation(text_turns):
    """The ``tokens/`` metrics (Fig. 5's unseen tokens) from the heads, checked by hand on a tiny policy: policy
    mass off the data's tokens, mean raw Q on and off them, and where the highest Q lies."""
    from vlmq_core.objective import loss_from_heads, token_usage
    from vlmq_core.tokens import seen_tokens

    policy = make_policy("llama")
    randomize_lora(policy)
    batch = build_batch(policy, transitions(text_turns))
    heads = reply_heads(policy, batch, critic=True)
    V = heads.logits.shape[-1]
    seen = seen_tokens(policy, [t.reply for t in text_turns], V)
    assert seen[policy.stop_token_id] and seen[batch.tokens].all() and 0 < seen.sum() < V
    stats = token_usage(policy, heads, seen, heads.q)
    probs = heads.logits.float().softmax(-1)
    raw = policy.popart.denormalize(heads.q.float())
    manual_pi = sum(probs[i, ~seen].sum().item() for i in range(len(probs))) / len(probs)
    assert stats["tokens/pi_unseen"] == pytest.approx(manual_pi, rel=1e-5)
    assert stats["tokens/q_seen"] == pytest.approx(raw[:, seen].mean().item(), rel=1e-5)
    assert stats["tokens/q_unseen"] == pytest.approx(raw[:, ~seen].mean().item(), rel=1e-5)
    top = raw.argmax(-1)
    assert stats["tokens/argmax_q_unseen"] == pytest.approx(sum(not seen[t] for t in top) / len(top))
    everything = torch.ones(V, dtype=torch.bool)
    everything[0] = False  # one unseen token: almost no mass there
    assert token_usage(policy, heads, everything, None) == {
        "tokens/pi_unseen": pytest.approx(probs[:, 0].mean().item())
    }
    targets = td_targets(policy, batch, heads, LossConfig())
    _, with_seen = loss_from_heads(policy, heads, targets, LossConfig(actor="maxq"), 0.0, seen)
    _, without = loss_from_heads(policy, heads, targets, LossConfig(actor="maxq"), 0.0)
    assert with_seen.keys() - without.keys() == set(stats) and "tokens/pi_unseen" not in without
    _, sft = loss_from_heads(policy, heads, None, LossConfig(actor="sft", critic_weight=0.0), 0.0, seen)
    assert sft["tokens/pi_unseen"] == pytest.approx(stats["tokens/pi_unseen"]) and "tokens/q_seen" not in sft


def test_token_usage_summary_weights_every_reply_position_equally(text_turns):
    from vlmq_core.inspector import token_usage_summary
    from vlmq_core.objective import token_usage
    from vlmq_core.tokens import seen_tokens

    policy = make_policy("llama")
    randomize_lora(policy)
    policy.model.eval()  # as the summary runs (no dropout)
    trans = transitions(text_turns)
    batch = build_batch(policy, trans)
    heads = reply_heads(policy, batch, critic=True)
    seen = seen_tokens(policy, [t.reply for t in text_turns[:2]], heads.logits.shape[-1])
    whole = token_usage(policy, heads, seen, heads.q)
    chunked = token_usage_summary(policy, trans, seen, chunk=1)
    assert chunked.keys() == whole.keys()
    for k in whole:
        assert chunked[k] == pytest.approx(float(whole[k]), rel=1e-4), k
    assert token_usage_summary(policy, trans, seen, critic=False).keys() == {"tokens/pi_unseen"}


def test_token_views_alternatives_ranks_and_episode_context(text_turns):
    """The inspector's top-k by pi and by Q and the taken token's ranks, against a manual computation on the full
    vocabulary; return-to-go and the previous reply from the episode; chunking changes nothing; the policy's
    mode is restored."""
    policy = make_policy("llama")
    randomize_lora(policy)
    policy.train()
    trans = transitions(text_turns)
    views = token_views(policy, trans, top_k=3, episodes={text_turns[0].episode_id: text_turns}, chunk=2)
    assert policy.training and len(views) == len(trans)
    policy.eval()
    with torch.no_grad():
        batch = build_batch(policy, trans)
        heads = reply_heads(policy, batch, critic=True)
    probs = heads.logits.softmax(-1)
    q = policy.popart.denormalize(heads.q)
    flat = [(view, j) for view in views for j in range(len(view.tokens))]
    assert len(flat) == batch.num_tokens
    for n, (view, j) in enumerate(flat):
        taken = int(batch.tokens[n])
        assert view.rank_pi[j] == int((probs[n] > probs[n, taken]).sum()) + 1
        assert view.rank_q[j] == int((q[n] > q[n, taken]).sum()) + 1
        best = probs[n].topk(3).indices
        assert [p for _, p, _ in view.top_pi[j]] == pytest.approx(probs[n, best].tolist(), rel=1e-4)
        assert [x for _, _, x in view.top_q[j]] == pytest.approx(q[n].topk(3).values.tolist(), rel=1e-4, abs=1e-5)
        assert view.top_pi[j][0][0] == policy.tokenizer.decode([int(best[0])])
    rewards = [t.reward for t in text_turns]
    assert [v.return_to_go for v in views] == pytest.approx([sum(rewards[i:]) for i in range(len(views))])
    assert views[0].previous_reply is None and views[1].previous_reply == text_turns[0].reply
    assert views[0].next_obs == text_turns[1].obs and views[-1].next_obs is None
    assert views[0].advantage_name == "Q(h, a) − V(h)" and views[0].sigma == pytest.approx(float(policy.popart.sigma))
    whole = token_views(policy, trans, top_k=3)
    assert [a for v in whole for a in v.advantage] == pytest.approx([a for v in views for a in v.advantage], abs=1e-5)
    assert whole[0].return_to_go is None
