"""Critic-only steps on replayed hidden states (vlmq_core.replay): storage, the loss, the trainer's use, resume."""

import json

import numpy as np
import pytest
import torch

from tests import conftest
from vlmq_core import losses
from vlmq_core.model import Policy
from vlmq_core.replay import CriticReplay, CriticReplayConfig, critic_replay_loss
from vlmq_core.trainer import TrainConfig, Trainer
from vlmq_core.update import LossConfig


def make_policy() -> Policy:
    torch.manual_seed(0)  # the same critic init in every policy of a test (resume comparisons)
    return conftest.make_policy("llama")


def cfg(run_dir=None, steps=4, replay_steps=3) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=2,
        grad_accum=2,
        lr_lora=1e-3,
        warmup_lora=2,
        warmup_critic=2,
        checkpoint_every=2,
        run_dir=str(run_dir) if run_dir else None,
        critic_replay=CriticReplayConfig(steps=replay_steps, batch_turns=3, window=2),
    )


def test_replay_keeps_the_last_window_of_updates_per_turn():
    replay = CriticReplay(window=2)
    for u in range(4):  # four updates of one minibatch: 2 turns of 3 and 2 tokens
        replay.begin_update()
        h = torch.full((5, 4), float(u))
        tokens = torch.tensor([1, 2, 3, 4, 5]) + 10 * u
        replay.add(h, tokens, torch.arange(5.0) + 10 * u, torch.tensor([0, 0, 0, 1, 1]))
    assert len(replay) == 4  # the current update (3) and the one before it
    rng = np.random.default_rng(0)
    h, tok, y = replay.sample(100, rng)
    assert h.shape == (10, 4)
    assert sorted(tok.tolist()) == sorted([21, 22, 23, 24, 25, 31, 32, 33, 34, 35])
    torch.testing.assert_close(y, tok.float() - 1.0)  # rows of a turn stay together and aligned
    torch.testing.assert_close(h[:, 0], (tok // 10).float())
    h, tok, _ = replay.sample(1, rng)
    assert len(tok) in (2, 3) and (tok.diff() == 1).all()  # one whole turn
    with pytest.raises(RuntimeError, match="empty"):
        CriticReplay(window=2).sample(1, rng)
    with pytest.raises(ValueError, match="steps >= 0"):
        CriticReplayConfig(steps=-1)


def test_replay_loss_is_eq6_on_the_taken_rows_of_the_full_head():
    policy = make_policy()
    torch.manual_seed(1)
    h = torch.randn(7, policy.critic.net[0].in_features)
    tokens = torch.randint(0, policy.vocab_size, (7,))
    y = torch.randn(7) * 5
    policy.popart.mu.fill_(1.5)
    loss, _ = critic_replay_loss(policy, h, tokens, y)
    q_full = policy.q_values(h).gather(1, tokens[:, None]).squeeze(1)
    expected, _ = losses.critic_loss(q_full, policy.popart.normalize(y))
    torch.testing.assert_close(loss, expected)


def test_replay_steps_train_only_the_critic_and_lower_its_loss(buffer):
    policy = make_policy()
    trainer = Trainer(policy, buffer, cfg(replay_steps=1))
    metrics = trainer.train_step()
    assert "critic/replay_loss" in metrics and len(trainer.replay) > 0
    lora = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    critic = {n: p.detach().clone() for n, p in policy.critic.named_parameters()}
    target = {n: p.detach().clone() for n, p in policy.target_critic.named_parameters()}
    trainer.cfg.critic_replay.batch_turns = 100  # every stored turn, so the loss is comparable step to step
    first = trainer._critic_replay_steps(use_bf16=False)["critic/replay_loss"]
    for _ in range(20):
        last = trainer._critic_replay_steps(use_bf16=False)["critic/replay_loss"]
    assert last < first
    assert all(torch.equal(p, lora[n]) for n, p in policy.model.named_parameters() if p.requires_grad)
    assert all(not torch.equal(p, critic[n]) for n, p in policy.critic.named_parameters())
    assert all(torch.equal(p, target[n]) for n, p in policy.target_critic.named_parameters())


def test_sft_without_critic_has_no_replay(buffer):
    trainer = Trainer(make_policy(), buffer, cfg(), LossConfig(actor="sft", critic_weight=0.0))
    assert trainer.replay is None and "critic/replay_loss" not in trainer.train_step()


def test_resume_with_replay_matches_an_uninterrupted_run(tmp_path, buffer):
    straight = make_policy()
    h_straight = Trainer(straight, buffer, cfg(tmp_path / "a")).fit(progress=False)
    Trainer(make_policy(), buffer, cfg(tmp_path / "b", steps=2)).fit(progress=False)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # a kill after the checkpoint
        f.write(json.dumps({"step": 3, "train/loss": 1.0}) + "\n")
    resumed = make_policy()
    trainer = Trainer(resumed, buffer, cfg(tmp_path / "b"))
    assert trainer.step == 2 and len(trainer.replay) > 0  # the replay came back with the checkpoint
    h_resumed = trainer.fit(progress=False)
    for key in ("train/loss", "critic/replay_loss"):
        assert [m[key] for m in h_resumed] == pytest.approx([m[key] for m in h_straight], rel=1e-5)
    for (n, a), b in zip(straight.critic.named_parameters(), resumed.critic.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
