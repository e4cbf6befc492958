"""Critic head, EMA target and PopArt (METHOD.md "Heads" and "Losses")."""

from __future__ import annotations

import pytest
import torch

from vlmq_core.critic import CriticHead, PopArt, ema_update, make_target


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
