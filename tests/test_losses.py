"""Loss functions on hand-computed tiny tensors (METHOD.md Eq. 3-7)."""

from __future__ import annotations

import math

import pytest
import torch

from vlmq_core import losses

LOGP = torch.tensor([-0.5, -1.0, -2.0, -0.25])


def test_sft_is_mean_negative_logp():
    loss, stats = losses.sft_loss(LOGP)
    assert loss.item() == pytest.approx(3.75 / 4)
    assert stats["actor/kept_frac"] == 1.0


def test_afsft_with_beta_minus_inf_is_exactly_sft():
    adv = torch.tensor([-1e30, -3.0, 0.0, 7.0])
    keep = losses.advantage_filter(adv, -math.inf)
    assert keep.all()
    logp = LOGP.clone().requires_grad_(True)
    a, stats = losses.afsft_loss(logp, keep)
    (ga,) = torch.autograd.grad(a, logp)
    logp2 = LOGP.clone().requires_grad_(True)
    s, _ = losses.sft_loss(logp2)
    (gs,) = torch.autograd.grad(s, logp2)
    assert a.item() == s.item()
    assert torch.equal(ga, gs)
    assert stats["actor/kept_frac"] == 1.0


def test_filter_keeps_exactly_advantage_at_least_beta():
    adv = torch.tensor([-0.5, 0.0, 0.25, -1e-6, 1.0, 0.2])
    assert losses.advantage_filter(adv, 0.0).tolist() == [False, True, True, False, True, True]
    assert losses.advantage_filter(adv, 0.25).tolist() == [False, False, True, False, True, False]  # equality kept
    assert losses.advantage_filter(adv, math.inf).tolist() == [False] * 6


def test_filter_has_no_gradient():
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    keep = losses.advantage_filter(adv * 2, 0.0)
    assert not keep.requires_grad and keep.dtype == torch.bool


def test_afsft_denominator_counts_all_tokens():
    keep = torch.tensor([True, False, True, False])
    loss, stats = losses.afsft_loss(LOGP, keep)
    assert loss.item() == pytest.approx((0.5 + 2.0) / 4)  # not / 2
    assert stats["actor/kept_frac"] == pytest.approx(0.5)
    logp = LOGP.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(losses.afsft_loss(logp, keep)[0], logp)
    assert g.tolist() == [-0.25, 0.0, -0.25, 0.0]  # dropped tokens get no gradient


def test_td_advantage_by_hand():
    """A = (y - V_bar(h)) / sigma: the taken token's target replaces its Q, in PopArt units; no gradient."""
    y = torch.tensor([1.0, -1.0], requires_grad=True)
    v_bar = torch.tensor([1.0, 1.0], requires_grad=True)
    adv = losses.td_advantage(y, v_bar, torch.tensor(2.0))
    assert torch.allclose(adv, torch.tensor([0.0, -1.0]))
    assert not adv.requires_grad
    assert losses.advantage_filter(adv, 0.0).tolist() == [True, False]


def test_td_target_bootstraps_only_non_terminal():
    r = torch.tensor([1.0, 0.0, -2.0])
    d = torch.tensor([0.0, 1.0, 1.0])
    v = torch.tensor([10.0, 20.0, 30.0])
    y = losses.td_target(r, d, v, gamma=0.9)
    assert y.tolist() == pytest.approx([1.0 + 0.9 * 10.0, 0.0, -2.0])
    y2 = losses.td_target(r, d, torch.tensor([10.0, -1e6, 1e6]), gamma=0.9)
    assert torch.equal(y[1:], y2[1:])  # terminal rows ignore next_v entirely
    v3 = torch.tensor([11.0, 20.0, 30.0])
    assert losses.td_target(r, d, v3, gamma=0.9)[0].item() == pytest.approx(1.0 + 0.9 * 11.0)


def test_td_target_has_no_gradient():
    v = torch.tensor([1.0, 2.0], requires_grad=True)
    y = losses.td_target(torch.zeros(2), torch.zeros(2), v, 0.5)
    assert not y.requires_grad


def test_nstep_target_by_hand():
    g = 0.9
    # two turns: 3 tokens (one-step targets a, b, c; c is the stop token's r_t + next turn), then 2 tokens
    y1 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    turn = torch.tensor([0, 0, 0, 1, 1])
    assert torch.equal(losses.nstep_target(y1, turn, 1, g), y1)  # Eq. 6 unchanged
    torch.testing.assert_close(losses.nstep_target(y1, turn, 2, g), torch.tensor([g * 2, g * 3, 3, g * 5, 5]))
    for n in (3, 50):  # at least the longest reply: every token bootstraps from its turn's stop token
        torch.testing.assert_close(losses.nstep_target(y1, turn, n, g), torch.tensor([g * g * 3, g * 3, 3, g * 5, 5]))
    with pytest.raises(ValueError, match="n >= 1"):
        losses.nstep_target(y1, turn, 0, g)


def test_nstep_target_has_no_gradient():
    y1 = torch.randn(4, requires_grad=True)
    assert not losses.nstep_target(y1, torch.tensor([0, 0, 1, 1]), 4, 0.99).requires_grad


def test_critic_loss_value_and_gradient_only_through_q():
    q = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    y = torch.tensor([0.0, 4.0, -1.0], requires_grad=True)
    loss, stats = losses.critic_loss(q, y)
    assert loss.item() == pytest.approx((1 + 4 + 0) / 3)
    assert stats["critic/abs_td_error"] == pytest.approx(1.0)
    loss.backward()
    assert q.grad.tolist() == pytest.approx([2 / 3, -4 / 3, 0.0])
    assert y.grad is None


def test_expected_value_is_the_exact_sum():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    q = torch.tensor([[4.0, 8.0], [2.0, -6.0]])
    v = losses.expected_value(logits, q)
    assert v.tolist() == pytest.approx([0.25 * 4 + 0.75 * 8, 0.5 * 2 - 0.5 * 6])
    adv = losses.q_advantage(torch.tensor([8.0, 2.0]), logits, q)
    assert adv.tolist() == pytest.approx([8.0 - 7.0, 2.0 + 2.0])


def test_expected_value_matches_manual_sum_random():
    g = torch.Generator().manual_seed(0)
    logits, q = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    manual = [
        sum(math.exp(a) * b for a, b in zip(row_l.tolist(), row_q.tolist(), strict=True))
        for row_l, row_q in zip(logits, q, strict=True)
    ]
    norm = [sum(math.exp(a) for a in row.tolist()) for row in logits]
    assert losses.expected_value(logits, q).tolist() == pytest.approx(
        [m / z for m, z in zip(manual, norm, strict=True)], abs=1e-5
    )


def test_maxq_loss_value_and_no_gradient_to_q():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], requires_grad=True)
    q = torch.tensor([[4.0, 8.0], [2.0, -6.0]], requires_grad=True)
    loss, _ = losses.maxq_loss(logits, q)
    assert loss.item() == pytest.approx(-((0.25 * 4 + 0.75 * 8) + (0.5 * 2 - 0.5 * 6)) / 2)
    loss.backward()
    assert q.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # d/dz of -sum softmax(z) q on the uniform row [0, 0]: -p_i (q_i - V) / 2 = [-0.5*(2+2), -0.5*(-6+2)] / 2
    assert logits.grad[1].tolist() == pytest.approx([-1.0, 1.0])


def test_joint_loss():
    assert losses.joint_loss(torch.tensor(2.0), torch.tensor(3.0), 8.0).item() == 26.0


def test_beta_schedule():
    assert losses.beta_schedule(0, 10) == -math.inf
    assert losses.beta_schedule(9, 10, beta=0.5) == -math.inf
    assert losses.beta_schedule(10, 10, beta=0.5) == 0.5
    assert losses.beta_schedule(1000, 10, beta=0.5) == 0.5
    assert losses.beta_schedule(0, 0) == 0.0
