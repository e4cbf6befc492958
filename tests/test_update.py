"""One training step (METHOD.md Eq. 1-7 wired together): what moves, what must not, and the TD targets."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.conftest import make_policy, randomize_lora, transitions
from vlmq_core import losses
from vlmq_core.inspect import token_views
from vlmq_core.model import Policy
from vlmq_core.tokens import build_batch
from vlmq_core.update import LossConfig, compute_loss, forward_reply, next_state_values

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
    # LoRA B starts at zero, so step 1 moves only B (A's gradient is B^T(...) = 0); step 2 moves A too
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
    assert all(isinstance(v, float) for v in stats.values())
    if actor == "afsft":
        assert 0.0 < stats["actor/kept_frac"] < 1.0  # the filter at beta=0 keeps some tokens, not all


def test_sft_without_critic_gives_critic_no_gradient(text_turns):
    policy = make_policy("llama")
    batch = build_batch(policy, transitions(text_turns))
    mu0 = policy.popart.mu.clone()
    loss, stats = compute_loss(policy, batch, LossConfig(actor="sft", critic_weight=0.0), beta=0.0)
    loss.backward()
    assert all(p.grad is None for p in policy.critic.parameters())
    assert any(p.grad is not None for p in policy.trainable_parameters()["lora"])
    assert "critic/loss" not in stats and stats["actor/kept_frac"] == 1.0
    assert torch.equal(policy.popart.mu, mu0)  # no TD targets, no PopArt update


def test_popart_statistics_move_during_a_step(text_turns):
    policy = make_policy("llama")
    batch = build_batch(policy, transitions(text_turns))
    _, stats = compute_loss(policy, batch, LossConfig(), beta=0.0)
    assert policy.popart.mu.item() != 0.0
    assert stats["critic/popart_sigma"] == pytest.approx(policy.popart.sigma.item())


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


@pytest.mark.parametrize("family", FAMILIES)
def test_next_state_values_match_a_manual_computation(request, family):
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
    with torch.no_grad():
        fwd = forward_reply(policy, batch, with_critic=False)
        v = next_state_values(policy, batch, fwd)

        def v_bar(h):
            logits = policy.lm_logits(h)
            q = policy.popart.denormalize(policy.q_values(h, target=True))
            return (logits.softmax(-1) * q).sum(-1)

        for b, (turn, nxt) in enumerate(trans):
            idx = (batch.turn_idx == b).nonzero().squeeze(1)
            # inside the reply: h' is the next reply token's state
            torch.testing.assert_close(v[idx[:-1]], v_bar(fwd.h[idx[1:]]), atol=1e-4, rtol=1e-4)
            if turn.done:
                assert v[idx[-1]].item() == 0.0
            else:  # after the stop token: the last state of the next prompt, run alone
                alone = build_batch(policy, [(nxt, None if nxt.done else turns[b + 2])])
                first = alone.pred_pos[0]  # the last prompt position of the next turn
                h0 = policy.hidden(alone.inputs).flatten(0, 1)[first]
                torch.testing.assert_close(v[idx[-1]], v_bar(h0[None])[0], atol=1e-4, rtol=1e-4)
        # the TD target compute_loss uses
        y = losses.td_target(batch.token_rewards(), batch.token_dones(), v, 0.995)
        last = batch.is_last
        assert torch.equal(y[~last], 0.995 * v[~last])


def test_target_critic_used_for_bootstrap(text_turns):
    """Changing the online critic does not change V_bar; changing the target critic does."""
    policy = make_policy("llama")
    policy.eval()
    batch = build_batch(policy, transitions(text_turns))
    with torch.no_grad():
        fwd = forward_reply(policy, batch, with_critic=False)
        v0 = next_state_values(policy, batch, fwd)
        policy.critic.last.bias.add_(5.0)
        assert torch.equal(next_state_values(policy, batch, fwd), v0)
        policy.target_critic.last.bias.add_(1.0)
        v2 = next_state_values(policy, batch, fwd)
    live = batch.token_dones() == 0
    torch.testing.assert_close(v2[live], v0[live] + policy.popart.sigma.item(), atol=1e-4, rtol=1e-4)


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


def test_critic_trains_backbone_false_stops_the_critic_gradient_at_h(text_turns):
    """``critic_trains_backbone=False``: LoRA gets exactly the actor's gradient (none when the filter drops
    every token), while the critic head's gradient is the same as with the paper's Eq. 7."""
    policy = make_policy("llama")
    randomize_lora(policy)
    policy.eval()
    batch = build_batch(policy, transitions(text_turns))
    modules = (policy.critic, policy.target_critic, policy.popart)
    start = [copy.deepcopy(m.state_dict()) for m in modules]

    def grads(cfg: LossConfig, beta: float):  # every call from the same critic and PopArt state
        for m, s in zip(modules, start, strict=True):
            m.load_state_dict(s)
        g_lora, _ = lora_grads(policy, batch, cfg, beta)
        return g_lora, [p.grad.clone() for p in policy.critic.parameters()]

    cut = LossConfig(actor="afsft", critic_weight=1.0, critic_trains_backbone=False)
    g_cut, c_cut = grads(cut, math.inf)
    assert all(g.abs().max() == 0 for g in g_cut.values())  # no actor term and no critic path to LoRA
    g_paper, c_paper = grads(LossConfig(actor="afsft", critic_weight=1.0), math.inf)
    assert all(g.abs().sum() > 0 for g in g_paper.values())
    for a, b in zip(c_cut, c_paper, strict=True):  # the critic head learns the same either way
        torch.testing.assert_close(a, b)
    # with the filter at 0 the LoRA gradient is the actor's alone: the same as with the critic term weighted 0
    g_actor, _ = grads(cut, 0.0)
    g_no_critic, _ = grads(LossConfig(actor="afsft", critic_weight=0.0), 0.0)
    assert any(g.abs().sum() > 0 for g in g_actor.values())
    for n in g_actor:
        torch.testing.assert_close(g_actor[n], g_no_critic[n], atol=1e-6, rtol=1e-5)


def test_nstep_targets_in_the_step(text_turns):
    """``td_steps`` above the longest reply: every reply token's target is its turn's stop-token target,
    discounted by its distance to it (seen through the mean target the step logs); 1 is Eq. 6."""
    policy = make_policy("llama")
    policy.eval()
    batch = build_batch(policy, transitions(text_turns))
    gamma = 0.9
    with torch.no_grad():
        fwd = forward_reply(policy, batch, with_critic=False)
        y1 = losses.td_target(batch.token_rewards(), batch.token_dones(), next_state_values(policy, batch, fwd), gamma)
    stop = y1[batch.is_last][batch.turn_idx]  # (N,) the turn's stop-token target, per token
    last_pos = torch.nonzero(batch.is_last).squeeze(1)[batch.turn_idx]
    expected = gamma ** (last_pos - torch.arange(batch.num_tokens)).float() * stop
    means = {}
    for n in (1, 1000):
        p = make_policy("llama")
        p.eval()
        _, stats = compute_loss(p, batch, LossConfig(td_steps=n, gamma=gamma), beta=0.0)
        means[n] = stats["critic/td_target"]
    assert means[1] == pytest.approx(y1.mean().item(), rel=1e-5, abs=1e-5)
    assert means[1000] == pytest.approx(expected.mean().item(), rel=1e-5, abs=1e-5)
    assert means[1000] != pytest.approx(means[1], rel=1e-3)
    with pytest.raises(ValueError, match="td_steps"):
        LossConfig(td_steps=0)


def test_td_advantage_is_target_minus_value(text_turns):
    """``advantage="td"``: the filter reads normalise(y) - V_bar(h), y the taken token's Eq. 6 target and V_bar
    the target critic's value, instead of Q(h, a) - V(h); checked against a manual computation, and in a
    training step's kept fraction."""

    def make() -> Policy:  # a target critic that differs from the online one
        p = make_policy("llama")
        p.eval()
        bias = p.target_critic.last.bias
        with torch.no_grad():
            bias.add_(0.5 + torch.randn(bias.shape, generator=torch.Generator().manual_seed(1)))
        return p

    policy = make()
    trans = transitions(text_turns)
    batch = build_batch(policy, trans)
    with torch.no_grad():
        fwd = forward_reply(policy, batch, with_critic=True)
        y = losses.td_target(batch.token_rewards(), batch.token_dones(), next_state_values(policy, batch, fwd), 0.995)
        v = losses.expected_value(fwd.logits, fwd.q)
        v_bar = losses.expected_value(fwd.logits, policy.q_values(fwd.h, target=True))
        q_taken = fwd.q.gather(1, batch.tokens[:, None]).squeeze(1)
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
    # in a step: PopArt moves first, then the filter keeps exactly the tokens with normalise(y) - V >= beta
    beta = float(expected["td"].median())
    p = make()
    with torch.no_grad():
        p.popart.update(y, [p.critic, p.target_critic])
        q = p.q_values(p.hidden(batch.inputs).flatten(0, 1)[batch.pred_pos], target=True)
        adv = p.popart.normalize(y) - losses.expected_value(fwd.logits, q)
    p = make()
    _, stats = compute_loss(p, batch, LossConfig(advantage="td"), beta=beta)
    assert stats["actor/kept_frac"] == pytest.approx((adv >= beta).float().mean().item())
    assert 0.0 < stats["actor/kept_frac"] < 1.0
    with pytest.raises(ValueError, match="advantage"):
        LossConfig(advantage="gae")
