"""Critic head, EMA target and PopArt (METHOD.md "Heads" and "Losses")."""

from __future__ import annotations

import math

import pytest
import torch

from vlmq_core import losses
from vlmq_core.critic import CriticConfig, CriticHead, PopArt, ema_update, init_constant, make_target


def heads(seed: int = 0) -> tuple[CriticHead, CriticHead]:
    torch.manual_seed(seed)
    critic = CriticHead(16, 50, hidden=32)
    target = make_target(critic)
    with torch.no_grad():  # a target that differs from the online head
        for p in target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return critic, target


def test_critic_shapes():
    critic = CriticHead(16, 50, hidden=32)
    assert critic(torch.randn(3, 7, 16)).shape == (3, 7, 50)
    assert (critic.net[0].in_features, critic.net[0].out_features) == (16, 32)
    assert critic.last is critic.net[-1] and critic.last.out_features == 50


def test_make_target_is_a_frozen_copy():
    critic = CriticHead(4, 5, hidden=3)
    target = make_target(critic)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in critic.parameters())
    for pt, po in zip(target.parameters(), critic.parameters(), strict=True):
        assert torch.equal(pt, po) and pt.data_ptr() != po.data_ptr()


@pytest.mark.parametrize("beta", [5e-4, 0.3])
def test_popart_preserves_unnormalised_outputs(beta):
    critic, target = heads()
    popart = PopArt(beta=beta, init_nu=100.0)
    h = torch.randn(64, 16)
    before = [popart.denormalize(m(h)) for m in (critic, target)]
    mu0, sigma0 = popart.mu.item(), popart.sigma.item()
    for _ in range(5):
        popart.update(40.0 + 3.0 * torch.randn(128), [critic, target])
    assert popart.mu.item() != pytest.approx(mu0) and popart.sigma.item() != pytest.approx(sigma0)
    for b, m in zip(before, (critic, target), strict=True):
        after = popart.denormalize(m(h))
        torch.testing.assert_close(after, b, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(m(h), b / sigma0)  # the normalised outputs did move


def test_popart_statistics_math():
    popart = PopArt(beta=0.25, init_nu=100.0)
    y = torch.tensor([2.0, 4.0])
    popart.update(y, [])
    mu = 0.75 * 0 + 0.25 * 3.0
    nu = 0.75 * 100 + 0.25 * 10.0
    assert popart.mu.item() == pytest.approx(mu)
    assert popart.nu.item() == pytest.approx(nu)
    assert popart.sigma.item() == pytest.approx((nu - mu**2) ** 0.5)
    assert popart.normalize(torch.tensor(5.0)).item() == pytest.approx((5.0 - mu) / (nu - mu**2) ** 0.5)
    x = torch.tensor([0.3, -2.0])
    torch.testing.assert_close(popart.denormalize(popart.normalize(x)), x)


def test_popart_empty_targets_change_nothing():
    critic, target = heads()
    popart = PopArt()
    w = critic.last.weight.clone()
    popart.update(torch.zeros(0), [critic, target])
    assert popart.mu.item() == 0 and popart.nu.item() == 100.0
    assert torch.equal(critic.last.weight, w)


def test_disabled_popart_is_identity():
    critic, target = heads()
    popart = PopArt(beta=0.3, init_nu=100.0, enabled=False)
    w, b = critic.last.weight.clone(), critic.last.bias.clone()
    popart.update(40.0 + torch.randn(32), [critic, target])
    assert popart.mu.item() == 0.0 and popart.sigma.item() == 1.0
    assert torch.equal(critic.last.weight, w) and torch.equal(critic.last.bias, b)
    x = torch.randn(5)
    assert torch.equal(popart.normalize(x), x) and torch.equal(popart.denormalize(x), x)


def test_ema_update_math():
    critic, target = heads()
    tau = 0.008
    expected = [(1 - tau) * pt + tau * po for pt, po in zip(target.parameters(), critic.parameters(), strict=True)]
    online = [p.clone() for p in critic.parameters()]
    ema_update(target, critic, tau)
    for pt, e in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(pt, e, atol=1e-7, rtol=1e-6)
    for po, o in zip(critic.parameters(), online, strict=True):
        assert torch.equal(po, o)  # the online head is untouched
    ema_update(target, critic, 1.0)
    for pt, po in zip(target.parameters(), critic.parameters(), strict=True):
        torch.testing.assert_close(pt, po)
    assert all(not p.requires_grad for p in target.parameters())


def test_init_constant_makes_every_output_that_value():
    critic = CriticHead(16, 50, hidden=32)
    init_constant(critic, -1.4)
    out = critic(torch.randn(5, 16) * 30)
    assert torch.equal(out, torch.full((5, 50), -1.4))
    target = make_target(critic)
    assert torch.equal(target(torch.randn(2, 16)), torch.full((2, 50), -1.4))


def test_policy_init_q_is_unnormalised_and_shared_with_target():
    from tests.conftest import make_policy
    from vlmq_core.model import PolicyConfig

    policy = make_policy("llama", cfg=PolicyConfig(critic=CriticConfig(init_q=-14.0)))
    h = torch.randn(3, policy.critic.net[0].in_features)
    for target in (False, True):
        q = policy.popart.denormalize(policy.q_values(h, target=target))
        assert torch.allclose(q, torch.full_like(q, -14.0), atol=1e-4)


def test_pessimistic_init_keeps_a_near_deterministic_token_that_random_init_drops():
    """The failure that made AFSFT unlearn NumberLine's syntax, in miniature (Eq. 5 on hand-made tensors).

    The policy puts 0.9 on token 0 (a formatting token of every good reply). The critic has learned the
    data's negative return for it, Q(h, 0) = -0.3. Tokens the data never shows keep their initial Q:
    ~0 with random init, so V = 0.9 * -0.3 + 0.1 * 0 = -0.27 > Q(h, 0) and the filter drops the token;
    at a pessimistic init (-1.4) V = 0.9 * -0.3 + 0.1 * -1.4 = -0.41 < Q(h, 0) and it is kept.
    """
    vocab = 10
    logits = torch.full((1, vocab), -20.0)
    logits[0, 0] = 0.0
    logits[0, 1:] = math.log(0.1 / (vocab - 1)) - math.log(0.9)  # pi(0) = 0.9, the rest share 0.1
    for init, kept in ((0.0, False), (-1.4, True)):
        q = torch.full((1, vocab), init)
        q[0, 0] = -0.3
        adv = losses.advantages(q[:, 0], logits, q)
        assert bool(losses.advantage_filter(adv, 0.0)[0]) is kept
