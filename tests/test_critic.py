"""Critic head, EMA target and PopArt (METHOD.md "Heads" and "Losses")."""

from __future__ import annotations

import math

import pytest
import torch

from vlmq_core import losses
from vlmq_core.critic import (
    CriticConfig,
    CriticHead,
    InputWhitening,
    PopArt,
    ema_update,
    init_constant,
    make_target,
)


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


def test_taken_rows_equal_the_full_head_and_their_sparse_gradient_the_dense_one():
    """The critic loss differentiates only the taken tokens' Q (Eq. 6): the taken-rows path gives the full head's
    values, no gradient through the (N, V) values, and with ``sparse_grad`` (the trainer keeps a dense ``.grad``)
    the same gradient as the dense path, added in place."""
    torch.manual_seed(0)
    head = CriticHead(16, 50, 8)
    h, tokens = torch.randn(6, 16), torch.tensor([3, 3, 7, 0, 49, 12])
    taken, every = head.taken_and_all(h, tokens)
    torch.testing.assert_close(taken, head(h).gather(1, tokens[:, None]).squeeze(1))
    torch.testing.assert_close(every, head(h))
    assert taken.requires_grad and not every.requires_grad
    grads = []
    for sparse in (False, True):
        head.sparse_grad = sparse
        for p in head.parameters():
            p.grad = torch.zeros_like(p)
        (head.taken_and_all(h, tokens)[0] ** 2).sum().backward()
        assert all(p.grad.layout == torch.strided for p in head.parameters())
        grads.append([p.grad.clone() for p in head.parameters()])
    for dense, sparse in zip(*grads, strict=True):
        torch.testing.assert_close(sparse, dense)
    assert grads[0][-2][[1, 2]].abs().sum() == 0 and grads[0][-2][3].abs().sum() > 0  # only taken rows


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
    popart = PopArt(init_nu=100.0)
    h = torch.randn(64, 16)
    before = [popart.denormalize(m(h)) for m in (critic, target)]
    mu0, sigma0 = popart.mu.item(), popart.sigma.item()
    for _ in range(5):
        popart.update(PopArt.sums(40.0 + 3.0 * torch.randn(128)), beta, [critic, target])
    assert popart.mu.item() != pytest.approx(mu0) and popart.sigma.item() != pytest.approx(sigma0)
    for b, m in zip(before, (critic, target), strict=True):
        after = popart.denormalize(m(h))
        torch.testing.assert_close(after, b, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(m(h), b / sigma0)  # the normalised outputs did move


def test_popart_statistics_math():
    popart = PopArt(init_nu=100.0)
    y = torch.tensor([2.0, 4.0])
    assert PopArt.sums(y).tolist() == [6.0, 20.0, 2.0]
    popart.update(PopArt.sums(y), 0.25, [])
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
    popart.update(PopArt.sums(torch.zeros(0)), 0.1, [critic, target])
    assert popart.mu.item() == 0 and popart.nu.item() == 100.0
    assert torch.equal(critic.last.weight, w)


def test_disabled_popart_is_identity():
    critic, target = heads()
    popart = PopArt(init_nu=100.0, enabled=False)
    w, b = critic.last.weight.clone(), critic.last.bias.clone()
    popart.update(PopArt.sums(40.0 + torch.randn(32)), 0.3, [critic, target])
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
        adv = losses.q_advantage(q[:, 0], logits, q)
        assert bool(losses.advantage_filter(adv, 0.0)[0]) is kept


def correlated(n: int, d: int = 16, seed: int = 0, shift: float = 5.0) -> torch.Tensor:
    """Hidden-state-like data: a large common offset and strongly correlated features."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[:, None]
    return torch.randn(n, d, generator=g) @ mix + shift


def test_whitening_observe_exact_pools_batches():
    x = correlated(300)
    w = InputWhitening(16)
    w.observe(x[:100], beta=0.5, exact=True)
    w.observe(x[100:], beta=0.5, exact=True)
    torch.testing.assert_close(w.mean, x.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.cov, torch.cov(x.T, correction=0), atol=1e-5, rtol=1e-5)
    assert float(w.count) == 300


def test_whitening_running_rate_is_exact_then_beta():
    w = InputWhitening(2)
    w.observe(torch.tensor([[1.0, 1.0]]), beta=0.1)  # first batch: rate 1
    w.observe(torch.tensor([[3.0, 3.0]]), beta=0.1)  # rate max(0.1, 1/2) = 1/2
    torch.testing.assert_close(w.mean, torch.tensor([2.0, 2.0]))
    for _ in range(30):
        w.observe(torch.tensor([[0.0, 0.0]]), beta=0.1)  # rate decays to beta = 0.1, never below
    rates = 1.0
    for k in range(30):
        rates *= 1 - max(0.1, 1 / (3 + k))
    torch.testing.assert_close(w.mean, torch.full((2,), 2.0 * rates))


def test_whitening_refresh_whitens_and_preserves_both_heads_outputs():
    critic, target = heads()
    w = InputWhitening(16)
    h = correlated(500, seed=1)
    before = [m(w(h)) for m in (critic, target)]
    w.observe(h, beta=0.5, exact=True)
    w.refresh([critic, target], eps=1e-6)
    x = w(h)
    torch.testing.assert_close(x.mean(0), torch.zeros(16), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.cov(x.T, correction=0), torch.eye(16), atol=2e-2, rtol=0)  # float32 buffers
    for b, m in zip(before, (critic, target), strict=True):
        torch.testing.assert_close(m(x), b, atol=1e-4, rtol=1e-4)
    # a second refresh on shifted statistics: outputs still preserved, the transform moved
    matrix = w.matrix.clone()
    before = [m(w(h)) for m in (critic, target)]
    w.observe(correlated(500, seed=2, shift=-3.0), beta=0.5)
    w.refresh([critic, target], eps=1e-6)
    assert not torch.allclose(w.matrix, matrix)
    for b, m in zip(before, (critic, target), strict=True):
        torch.testing.assert_close(m(w(h)), b, atol=1e-3, rtol=1e-4)


def test_whitening_disabled_or_unrefreshed_is_identity():
    h = correlated(50)
    off = InputWhitening(16, enabled=False)
    off.observe(h)
    critic, target = heads()
    wt = critic.net[0].weight.clone()
    off.refresh([critic, target])
    assert float(off.count) == 0 and torch.equal(off(h), h) and torch.equal(critic.net[0].weight, wt)
    on = InputWhitening(16)
    on.observe(h)
    assert torch.equal(on(h), h)  # statistics alone change nothing until a refresh


def auc_after_adam(x: torch.Tensor, good: torch.Tensor, steps: int = 100) -> float:
    """The critic's MLP shape regressed on a +-0.1 reward with Adam (lr 6e-4, 8 per step); held-out AUC."""
    torch.manual_seed(0)
    n = len(x) * 2 // 3
    net = CriticHead(x.shape[1], 1, 400)
    opt = torch.optim.Adam(net.parameters(), lr=6e-4)
    y = good.float() * 0.2 - 0.1
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, n, (8,), generator=g)
        loss = ((net(x[i]).squeeze(1) - y[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = net(x[n:]).squeeze(1)
    pos, neg = q[good[n:]], q[~good[n:]]
    return (pos[:, None] > neg[None, :]).float().mean().item()


def test_whitening_lets_the_critic_mlp_read_a_tight_far_cluster():
    """Why the critic whitens its inputs, in miniature (NumberLine's stop-token states, measured in
    ``scripts/diagnostics/critic_probe.py``): the states that decide the reward form a tight cluster far
    from the mean of all reply positions, and the reward is linear in a direction of small variance that
    is not aligned with any feature. Raw or per-feature standardised inputs: the MLP barely moves in 100
    Adam steps; ZCA-whitened with statistics of all positions: it separates the cluster."""
    d = 32
    g = torch.Generator().manual_seed(0)
    scale = torch.logspace(0.5, -1.5, d)  # anisotropic, like hidden states
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g))  # ...and correlated across features
    others = (torch.randn(2000, d, generator=g) * scale) @ rot  # every other reply position
    good = torch.rand(600, generator=g) > 0.5
    local = 0.2 * scale * torch.randn(600, d, generator=g)  # a tight cluster...
    local[:, -1] += scale[-1] * (good.float() * 2 - 1)  # ...split along its smallest direction
    cluster = (torch.randn(d, generator=g) * scale * 3) @ rot + local @ rot  # ...far from the rest
    every = torch.cat([others, cluster])
    w = InputWhitening(d)
    w.observe(every, exact=True)
    w.refresh([], eps=0.01)
    raw = auc_after_adam(cluster, good)
    standardised = auc_after_adam((cluster - every.mean(0)) / every.std(0), good)
    white = auc_after_adam(w(cluster), good)
    assert white > 0.97 and raw < 0.7 and standardised < 0.7, (raw, standardised, white)
