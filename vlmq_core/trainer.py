"""The offline trainer: minibatches of turns from a buffer, Eq. 7 updates, checkpoints, resume after a kill.

Each optimizer update: ``grad_accum`` minibatches of ``batch_size`` turn transitions are sampled, converted
to tokens (Eq. 1-2) and differentiated (:func:`vlmq_core.update.compute_loss`); gradients are clipped, LoRA
and critic step with their own learning rates and linear warmups, and the target critic follows by EMA.
With ``CriticConfig.whiten`` the critic's input statistics are first estimated on a sample of turns
(:meth:`Trainer.calibrate_critic_inputs`) and the whitening is refreshed every ``whiten_every`` updates.
Metrics are one namespaced dict per update (definitions: ``docs/METRICS.md``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vlmq_core.buffer import TurnBuffer
from vlmq_core.critic import ema_update
from vlmq_core.losses import beta_schedule
from vlmq_core.model import Policy
from vlmq_core.replay import CriticReplay, CriticReplayConfig, critic_replay_loss
from vlmq_core.tokens import build_batch
from vlmq_core.update import LossConfig, compute_loss, reply_hidden


@dataclass
class TrainConfig:
    """Optimisation settings (METHOD.md Tables 2-3, Gym Cards column; per-GPU minibatch)."""

    steps: int = 512
    """Optimizer updates in all (a resumed run continues up to this number)."""
    batch_size: int = 3
    """Turn transitions per minibatch."""
    grad_accum: int = 4
    """Minibatches accumulated per optimizer update."""
    lr_lora: float = 1e-4
    """Learning rate of the LoRA adapters ("LR VLM")."""
    lr_critic: float = 6e-4
    """Learning rate of the critic head."""
    warmup_lora: int = 250
    """Linear warmup of the LoRA learning rate, in updates."""
    warmup_critic: int = 100
    """Linear warmup of the critic learning rate, in updates."""
    grad_clip: float = 2.0
    """Global gradient-norm clip."""
    optimizer: str = "auto"
    """``auto`` (8-bit AdamW when bitsandbytes works on CUDA, else AdamW), ``adamw`` or ``adamw8bit``."""
    bf16: bool = True
    """bfloat16 autocast on CUDA (ignored on CPU)."""
    seed: int = 0
    """Seed of minibatch sampling and dropout."""
    checkpoint_every: int = 100
    """Write a checkpoint every this many updates (and at the end); 0 only at the end."""
    run_dir: str | None = None
    """Folder for checkpoints and metrics.jsonl; a run found there is resumed. None keeps nothing on disk."""
    critic_replay: CriticReplayConfig = field(default_factory=CriticReplayConfig)
    """Extra critic-only steps per update on the last updates' hidden states and targets (``vlmq_core.replay``;
    ours). The default, none, is the paper's schedule."""


def _make_optimizer(params: dict[str, list], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = [{"params": params["lora"], "lr": cfg.lr_lora}, {"params": params["critic"], "lr": cfg.lr_critic}]
    want_8bit = cfg.optimizer == "adamw8bit" or (cfg.optimizer == "auto" and device.type == "cuda")
    if want_8bit:
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups)
        except Exception as e:  # bitsandbytes missing or without a working CUDA build
            if cfg.optimizer == "adamw8bit":
                raise RuntimeError(f"optimizer='adamw8bit' needs a working bitsandbytes on CUDA: {e}") from e
            warnings.warn(f"8-bit AdamW unavailable ({type(e).__name__}); using torch AdamW.", stacklevel=3)
    elif cfg.optimizer not in ("auto", "adamw"):
        raise ValueError(f"TrainConfig.optimizer must be 'auto', 'adamw' or 'adamw8bit', not {cfg.optimizer!r}")
    elif cfg.optimizer == "auto":
        warnings.warn("No CUDA: using torch AdamW (8-bit AdamW needs bitsandbytes on CUDA).", stacklevel=3)
    return torch.optim.AdamW(groups)


class Trainer:
    """Trains a :class:`Policy` on a :class:`TurnBuffer` with SFT, AFSFT or the max-Q actor."""

    def __init__(
        self,
        policy: Policy,
        buffer: TurnBuffer,
        cfg: TrainConfig | None = None,
        loss: LossConfig | None = None,
        eval_fn: Callable[[Policy], dict[str, float]] | None = None,
        eval_every: int = 0,
    ):
        self.policy, self.buffer = policy, buffer
        self.cfg, self.loss_cfg = cfg or TrainConfig(), loss or LossConfig()
        self.eval_fn, self.eval_every = eval_fn, eval_every
        params = policy.trainable_parameters()
        self.params = params["lora"] + (params["critic"] if self.loss_cfg.uses_critic else [])
        if not self.loss_cfg.uses_critic:
            params = {"lora": params["lora"], "critic": []}
        self.optimizer = _make_optimizer(params, self.cfg, policy.device)
        warm = (self.cfg.warmup_lora, self.cfg.warmup_critic)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [lambda s, w=w: min(1.0, (s + 1) / max(1, w)) for w in warm]
        )
        self.rng = np.random.default_rng(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        rcfg = self.cfg.critic_replay
        self.replay = CriticReplay(rcfg.window) if rcfg.steps and self.loss_cfg.uses_critic else None
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.run_dir = Path(self.cfg.run_dir) if self.cfg.run_dir else None
        if self.run_dir is not None and self.resume():
            print(f"Resumed {self.run_dir} at update {self.step}/{self.cfg.steps}.")

    # ---- one update ---------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer update (``grad_accum`` minibatches); returns its metrics."""
        t0 = time.perf_counter()
        policy, cfg = self.policy, self.cfg
        policy.train()
        beta = beta_schedule(
            self.step,
            self.loss_cfg.filter_start_step,
            self.loss_cfg.beta,
            self.loss_cfg.beta_ramp_steps,
            self.loss_cfg.beta_ramp_from,
        )
        use_bf16 = cfg.bf16 and policy.device.type == "cuda"
        sums: dict[str, float] = {}
        if self.replay is not None:
            self.replay.begin_update()
        for _ in range(cfg.grad_accum):
            batch = build_batch(policy, self.buffer.sample(cfg.batch_size, self.rng))
            with torch.autocast(device_type=policy.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, stats = compute_loss(policy, batch, self.loss_cfg, beta, self.replay)
            (loss / cfg.grad_accum).backward()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.replay is not None:
            sums |= self._critic_replay_steps(use_bf16)
        if self.loss_cfg.uses_critic:
            ema_update(policy.target_critic, policy.critic, policy.cfg.critic.tau)
        self.step += 1
        every = policy.cfg.critic.whiten_every
        if self.loss_cfg.uses_critic and policy.whiten.enabled and every and self.step % every == 0:
            policy.whiten.refresh([policy.critic, policy.target_critic])
        lrs = self.scheduler.get_last_lr()
        return {
            "step": self.step,
            **sums,
            "train/grad_norm": float(grad_norm),
            "train/lr_lora": lrs[0],
            "train/lr_critic": lrs[1],
            "time/update_s": time.perf_counter() - t0,
        }

    def _critic_replay_steps(self, use_bf16: bool) -> dict[str, float]:
        """``critic_replay.steps`` critic-only optimizer steps on the replay (the LoRA group has no gradient and
        is skipped by the optimizer). Returns their mean loss."""
        policy, rcfg = self.policy, self.cfg.critic_replay
        critic_params = list(policy.critic.parameters())
        total = 0.0
        for _ in range(rcfg.steps):
            h, tokens, y = self.replay.sample(rcfg.batch_turns, self.rng)
            with torch.autocast(device_type=policy.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, _ = critic_replay_loss(policy, h, tokens, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(critic_params, self.cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            total += loss.item()
        return {"critic/replay_loss": total / rcfg.steps}

    @torch.no_grad()
    def calibrate_critic_inputs(self, progress: bool = True) -> int:
        """Estimate the critic's input statistics and set its whitening before the first update.

        Runs ``whiten_calib_turns`` turns (sampled with their own generator, so the training minibatches do
        not change) through the backbone without gradient. Returns the number of hidden states observed.
        """
        policy, ccfg = self.policy, self.policy.cfg.critic
        rng = np.random.default_rng([self.cfg.seed, 1])
        was_training = policy.model.training
        policy.model.eval()
        seen, left = 0, ccfg.whiten_calib_turns
        bar = tqdm(total=left, desc="critic input statistics", disable=not progress)
        try:
            while left > 0:
                n = min(self.cfg.batch_size, left)
                batch = build_batch(policy, self.buffer.sample(n, rng))
                h = reply_hidden(policy, batch).float()  # no |V|-wide head: only the states
                policy.whiten.observe(h, exact=True)
                seen, left = seen + h.shape[0], left - n
                bar.update(n)
        finally:
            policy.model.train(was_training)
            bar.close()
        policy.whiten.refresh([policy.critic, policy.target_critic])
        return seen

    def fit(self, progress: bool = True) -> list[dict[str, float]]:
        """Train until ``cfg.steps`` updates (resuming where a checkpoint left off); returns the history."""
        whiten = self.policy.whiten
        if self.loss_cfg.uses_critic and whiten.enabled and int(whiten.refreshes) == 0 and self.step < self.cfg.steps:
            self.calibrate_critic_inputs(progress)
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=f"train {self.loss_cfg.actor}", disable=not progress)
        while self.step < self.cfg.steps:
            metrics = self.train_step()
            if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
                metrics |= self.eval_fn(self.policy)
            self._record(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", kept=f"{metrics.get('actor/kept_frac', 1):.2f}")
            every = self.cfg.checkpoint_every
            if self.run_dir is not None and ((every and self.step % every == 0) or self.step == self.cfg.steps):
                self.save_checkpoint()
        bar.close()
        return self.history

    def _record(self, metrics: dict[str, float]) -> None:
        self.history.append(metrics)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``run_dir/checkpoint`` atomically: a complete new folder replaces the old one by renames."""
        assert self.run_dir is not None
        final, tmp, old = (self.run_dir / n for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
        shutil.rmtree(tmp, ignore_errors=True)
        self.policy.save(tmp)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "train_config": asdict(self.cfg),
            "loss_config": asdict(self.loss_cfg),
            "critic_replay": self.replay.state_dict() if self.replay is not None else None,
        }
        torch.save(state, tmp / "trainer.pt")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def resume(self) -> bool:
        """Load the newest complete checkpoint in ``run_dir`` if there is one; True when resumed."""
        assert self.run_dir is not None
        folder = next(
            (self.run_dir / n for n in ("checkpoint", "checkpoint.old") if (self.run_dir / n / "trainer.pt").is_file()),
            None,
        )
        if folder is None:
            return False
        self.policy.load(folder)
        state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if self.replay is not None and state.get("critic_replay") is not None:
            self.replay.load_state_dict(state["critic_replay"])
        self.step = int(state["step"])
        self.history = load_history(self.run_dir, up_to=self.step)
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(m) + "\n" for m in self.history))
        os.replace(tmp, self.run_dir / "metrics.jsonl")
        return True


def load_history(run_dir: str | os.PathLike, up_to: int | None = None) -> list[dict[str, float]]:
    """Read ``metrics.jsonl`` of a run (ignoring a torn last line); keep updates ``<= up_to`` if given."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if up_to is None or m["step"] <= up_to:
            out.append(m)
    return out
