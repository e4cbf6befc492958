"""The trainer: minibatches of turns from a buffer, Eq. 7 updates, and the offline loop (:meth:`Trainer.fit`).

:meth:`Trainer.train_step` is the one place where training changes state, in the order of the pseudo-code in
:mod:`vlmq_core.objective`: per minibatch the TD targets, then the PopArt update (which rescales both critic
heads) and the whitening statistics, then the loss and its gradient; per update the optimizer step, the target
EMA and, every ``whiten_every`` updates, the whitening refresh. Statistics are sums, added up over processes
(``torch.distributed``) before they are applied, so every process holds the same heads.
Metrics are one namespaced dict per update (definitions: ``docs/METRICS.md``). The trainer writes nothing to disk:
its state is :meth:`Trainer.state_dict`, and a run's folder is written by :class:`vlmq_core.rundir.RunDir`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from vlmq_core import config, distributed
from vlmq_core.buffer import TurnBuffer
from vlmq_core.config import ConfigError, check_fields, require
from vlmq_core.critic import InputWhitening, PopArt, ema_update
from vlmq_core.distributed import average_gradients, sum_over_processes
from vlmq_core.frozen import FrozenCache
from vlmq_core.losses import LossConfig, beta_schedule
from vlmq_core.model import Policy, decoder_pass
from vlmq_core.objective import Targets, loss_from_heads, reply_heads, reply_hidden, td_targets
from vlmq_core.progress import bar as progress_bar
from vlmq_core.report import check_report_to
from vlmq_core.tokens import TokenBatch, TokenCache, build_batch, seen_tokens
from vlmq_core.turns import Transition

if TYPE_CHECKING:
    from vlmq_core.rundir import RunDir


@dataclass
class TrainConfig:
    """Optimisation settings (METHOD.md Tables 2-3, Gym Cards column; per-process minibatch)."""

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
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """``adamw``: torch's fused AdamW (ours: one kernel for every parameter; the optimizer state of LoRA and the critic
    is small); ``adamw8bit``: bitsandbytes' 8-bit AdamW on CUDA (the paper's; one kernel launch per tensor)."""
    bf16: bool = True
    """bfloat16 autocast on CUDA (ignored on CPU)."""
    seed: int = 0
    """Seed of minibatch sampling and dropout."""
    checkpoint_every: int = 100
    """Write a checkpoint every this many updates (and at the end); 0: only at the end."""
    tau: float = 0.008
    """EMA rate of the target critic, phi_bar <- (1 - tau) phi_bar + tau phi (Tables 2-3: 0.008)."""
    popart_beta: float = 5e-4
    """Rate of PopArt's statistics of the TD targets (Tables 2-3: 5e-4)."""
    whiten_every: int = 10
    """With ``critic.whiten``: recompute the whitening from the running statistics every this many updates (0: only
    at calibration). 10 with ``whiten_beta`` 0.05 gave the best filter in NumberLine runs (docs/FINDINGS.md, 4)."""
    whiten_beta: float = 0.05
    """With ``critic.whiten``: rate of the running input statistics per minibatch (after the exact calibration)."""
    whiten_eps: float = 0.01
    """With ``critic.whiten``: eigenvalues of the covariance get ``eps * mean eigenvalue`` added."""
    whiten_calib_turns: int = 64
    """With ``critic.whiten``: turns run through the backbone (no gradient) to estimate the statistics before the
    first update."""
    compile: Literal["auto", "none", "default", "reduce-overhead"] = "auto"
    """``torch.compile`` of an update's decoder passes (``Policy.compiled``): ``default`` fuses kernels,
    ``reduce-overhead`` also replays them as CUDA graphs; lengths are padded to multiples of 64 and next prompts to
    ``batch_size`` rows so the shapes repeat. ``auto`` is ``none`` until a device's measurement says otherwise
    (``benchmarks/bench_throughput.py``; docs/FINDINGS.md, 28). Compiling costs once per run, in its first updates."""
    layer_cache_gb: float = 2.0
    """With ``lora.layers`` below the decoder's depth: memory (GB, on the model's device) for the frozen layers' output
    per turn (``vlmq_core.frozen``; ours), so an update runs only the adapted layers; 0 runs the frozen layers (without
    gradient) on every update instead. Without ``lora.layers`` there is nothing to cache."""
    report_to: list[str] = field(default_factory=list)
    """Also send the metrics to ``tensorboard`` (``run_dir/tensorboard``) and/or ``wandb`` (``WANDB_MODE=offline``
    works without a network); ``[]``: only ``metrics.jsonl``."""

    def __post_init__(self) -> None:
        check_fields(self, "train.")
        check_report_to(self.report_to)
        if self.layer_cache_gb < 0:
            raise ConfigError(f"train.layer_cache_gb must be >= 0 (0: no cache), not {self.layer_cache_gb}.")
        at_least_1 = (lambda v: v >= 1, ">= 1")
        require(
            self, "train.", {"steps": (lambda v: v >= 0, ">= 0"), "batch_size": at_least_1, "grad_accum": at_least_1}
        )


def _make_optimizer(params: dict[str, list], cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": params["lora"], "lr": cfg.lr_lora}, {"params": params["critic"], "lr": cfg.lr_critic}]
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups)
        except Exception as e:  # bitsandbytes missing or without a working CUDA build
            raise ConfigError(
                f"train.optimizer=adamw8bit needs a working bitsandbytes on CUDA ({type(e).__name__}: {e}); "
                "install it (pip install 'vlmq[quant]') or set train.optimizer=adamw."
            ) from e
    # fused: one kernel over all parameters (2 CPU cores: 12 ms an update against 70 ms for foreach, with the
    # critic's 20M parameters); it needs floating-point parameters on the CPU or CUDA
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused)


def as_numbers(stats: dict[str, torch.Tensor | float], device: torch.device) -> dict[str, float]:
    """A row of metrics as floats, read from the device in one transfer (and averaged over processes when there
    are several: NCCL needs the tensor on the GPU)."""
    values = torch.stack([torch.as_tensor(v, device=device).detach().double().reshape(()) for v in stats.values()])
    if distributed.world_size() > 1:
        values = sum_over_processes(values) / distributed.world_size()
    return dict(zip(stats, values.tolist(), strict=True))


def whitening_sums(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`InputWhitening.sums` of hidden states (N, d), summed over processes."""
    return tuple(sum_over_processes(t) for t in InputWhitening.sums(h.float()))


class Trainer:
    """Trains a :class:`Policy` on a :class:`TurnBuffer` with SFT, AFSFT or the max-Q actor.

    ``callback`` (called with the trainer every ``callback_every`` updates of :meth:`fit`) may return metrics to add
    to that update's row. A run's folder resumes a trainer with :meth:`vlmq_core.rundir.RunDir.resume`.
    """

    def __init__(
        self,
        policy: Policy,
        buffer: TurnBuffer,
        cfg: TrainConfig | None = None,
        loss: LossConfig | None = None,
        callback: Callable[[Trainer], dict[str, float] | None] | None = None,
        callback_every: int = 0,
    ):
        self.policy, self.buffer = policy, buffer
        self.cfg, self.loss_cfg = cfg or TrainConfig(), loss or LossConfig()
        self.callback, self.callback_every = callback, callback_every
        params = policy.trainable_parameters()
        if not self.loss_cfg.uses_critic:
            params = {"lora": params["lora"], "critic": []}
        self.params = params["lora"] + params["critic"]
        self.optimizer = _make_optimizer(params, self.cfg)
        for p in self.params:  # gradients stay allocated (zeroed, not freed, each update): see CriticHead.sparse_grad
            p.grad = torch.zeros_like(p)
        policy.critic.sparse_grad = True
        warm = (self.cfg.warmup_lora, self.cfg.warmup_critic)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [lambda s, w=w: min(1.0, (s + 1) / max(1, w)) for w in warm]
        )
        rank = distributed.rank()  # each process its own minibatches and dropout (rank 0 as with one process)
        self.rng = np.random.default_rng(self.cfg.seed if rank == 0 else [self.cfg.seed, rank])
        torch.manual_seed(self.cfg.seed + rank)
        self.step = 0
        self.history: list[dict[str, float]] = []  # the rows of fit's updates (a resumed run's earlier ones first)
        self._seen: tuple[int, torch.Tensor] | None = None  # (buffer version, mask) of the data's reply tokens
        self.tokens = TokenCache(policy)  # each prompt and reply tokenized once
        self.compile_mode = "none" if self.cfg.compile == "auto" else self.cfg.compile
        self._passes = None  # the compiled decoder passes (train.compile)
        if self.compile_mode != "none":
            import torch._dynamo as dynamo

            # one graph per padded length, training and inference: more than dynamo's default of 8
            dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
            self._passes = torch.compile(decoder_pass, mode=self.compile_mode, dynamic=False)
        self.frozen = None  # the frozen layers' output per turn (lora.layers)
        if policy.frozen_layers and self.cfg.layer_cache_gb > 0:
            self.frozen = FrozenCache(policy, self.tokens, int(self.cfg.layer_cache_gb * 2**30))

    @property
    def whitening_active(self) -> bool:
        return self.loss_cfg.uses_critic and self.policy.whiten.enabled

    # ---- one update ---------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer update (``grad_accum`` minibatches); every state change of training happens here."""
        t0 = time.perf_counter()
        policy, cfg, loss_cfg = self.policy, self.cfg, self.loss_cfg
        policy.train()
        beta = beta_schedule(self.step, loss_cfg.filter_start_step, loss_cfg.beta)
        use_bf16 = cfg.bf16 and policy.device.type == "cuda"
        sums: dict[str, torch.Tensor | float] = {}  # tensors stay on the device until the row is made
        if self.compile_mode == "reduce-overhead" and policy.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new update: the last one's graph outputs are done with
        for _ in range(cfg.grad_accum):
            batch = self.batch(self.buffer.sample(cfg.batch_size, self.rng))
            compiled = policy.compiled(self._passes) if self._passes is not None else contextlib.nullcontext()
            with compiled, torch.autocast(device_type=policy.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                heads = reply_heads(policy, batch)  # Eq. 1
                targets = td_targets(policy, batch, heads, loss_cfg) if loss_cfg.uses_critic else None  # Eq. 2, 6
                if targets is not None:
                    self._update_statistics(targets, heads.h)  # PopArt rescales both heads before the loss
                seen = self.seen_tokens(heads.logits.shape[-1])
                loss, stats = loss_from_heads(policy, heads, targets, loss_cfg, beta, seen)  # Eq. 3-7
            (loss / cfg.grad_accum).backward()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        average_gradients(self.params)  # several processes: DDP's mean of the gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=False)
        self.step += 1
        if loss_cfg.uses_critic:
            ema_update(policy.target_critic, policy.critic, cfg.tau)
            if self.whitening_active and cfg.whiten_every and self.step % cfg.whiten_every == 0:
                policy.whiten.refresh([policy.critic, policy.target_critic], cfg.whiten_eps)
        lrs = self.scheduler.get_last_lr()
        numbers = as_numbers(sums | {"train/grad_norm": grad_norm}, policy.device)  # the update's one wait
        return {
            "step": self.step,
            **numbers,
            "train/lr_lora": lrs[0],
            "train/lr_critic": lrs[1],
            "time/update_s": time.perf_counter() - t0,
        }

    def batch(self, transitions: list[Transition]) -> TokenBatch:
        """A minibatch of these transitions: their cached ids, and the frozen layers' output when there is a cache;
        with compiled passes, padded to repeating shapes."""
        shapes = {"bucket": 64, "next_rows": len(transitions)} if self._passes is not None else {}
        batch = build_batch(self.policy, transitions, self.tokens, **shapes)
        return self.frozen.attach(batch, transitions) if self.frozen is not None else batch

    def seen_tokens(self, size: int) -> torch.Tensor:
        """(size,) bool on the policy's device: the tokens of the buffer's replies as it is now (rebuilt whenever
        its content changed: ``TurnBuffer.version``, not its length, which a full FIFO buffer keeps), for the
        ``tokens/`` metrics (Fig. 5's unseen tokens)."""
        if self._seen is None or self._seen[0] != self.buffer.version:
            replies = (t.reply for t in self.buffer.turns)
            mask = seen_tokens(self.policy, replies, size, cache=self.tokens)
            self._seen = (self.buffer.version, mask.to(self.policy.device))
        return self._seen[1]

    @torch.no_grad()
    def _update_statistics(self, targets: Targets, h: torch.Tensor) -> None:
        """PopArt's statistics of the targets (rescaling the critic and its target) and the running whitening
        statistics of the reply states, each summed over processes first."""
        policy = self.policy
        popart_sums = sum_over_processes(PopArt.sums(targets.y))
        policy.popart.update(popart_sums, self.cfg.popart_beta, [policy.critic, policy.target_critic])
        if self.whitening_active and self.cfg.whiten_every:  # running statistics, read only by the refreshes
            policy.whiten.merge(whitening_sums(h), self.cfg.whiten_beta)

    @torch.no_grad()
    def calibrate_critic_inputs(self, progress: bool = True) -> int:
        """Estimate the critic's input statistics and set its whitening before the first update.

        Runs ``whiten_calib_turns`` turns (sampled with their own generator, so the training minibatches do
        not change) through the backbone without gradient. Returns the number of hidden states observed.
        """
        policy, cfg = self.policy, self.cfg
        rng = np.random.default_rng([cfg.seed, 1])
        was_training = policy.model.training
        policy.model.eval()
        seen, left = 0, cfg.whiten_calib_turns
        bar = progress_bar(total=left, desc="critic input statistics", disable=not progress)
        try:
            while left > 0:
                n = min(cfg.batch_size, left)
                h = reply_hidden(policy, self.batch(self.buffer.sample(n, rng))).float()
                policy.whiten.merge(whitening_sums(h), 0.0, exact=True)
                seen, left = seen + h.shape[0], left - n
                bar.update(n)
        finally:
            policy.model.train(was_training)
            bar.close()
        policy.whiten.refresh([policy.critic, policy.target_critic], cfg.whiten_eps)
        return seen

    def fit(self, progress: bool = True, run: RunDir | None = None) -> list[dict[str, float]]:
        """Train until ``cfg.steps`` updates (from ``self.step``: a resumed trainer continues); returns the history.
        With `run`, each row goes to its metrics and a checkpoint every ``checkpoint_every`` updates and at the end."""
        if self.whitening_active and int(self.policy.whiten.refreshes) == 0 and self.step < self.cfg.steps:
            self.calibrate_critic_inputs(progress)
        bar = progress_bar(
            total=self.cfg.steps,
            initial=self.step,
            desc=f"train {self.loss_cfg.actor}",
            disable=not (progress and distributed.is_main()),
        )
        while self.step < self.cfg.steps:
            metrics = self.train_step()
            if self.callback is not None and self.callback_every and self.step % self.callback_every == 0:
                metrics |= self.callback(self) or {}
            self.history.append(metrics)
            if run is not None:
                run.log(metrics, step=self.step)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", kept=f"{metrics.get('actor/kept_frac', 1):.2f}")
            every = self.cfg.checkpoint_every
            if run is not None and ((every and self.step % every == 0) or self.step == self.cfg.steps):
                run.save_checkpoint(self.policy, {"trainer.pt": self.state_dict()})
                distributed.barrier()
        bar.close()
        return self.history

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything of training besides the policy's weights: update counter, optimizer, schedules, RNG states."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "train_config": config.to_dict(self.cfg),
            "loss_config": config.to_dict(self.loss_cfg),
            "frozen_cache": self.frozen.state_dict() if self.frozen is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved (the policy's weights are loaded separately)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        if self.frozen is not None and state.get("frozen_cache"):
            self.frozen.load_state_dict(state["frozen_cache"])

    def continue_from(self, state: dict) -> None:
        """Continue another run's training (``online.init_from``): its update counter, optimizer moments and RNG
        states, with this run's learning rates (warmups count from that run's first update)."""
        base = list(self.scheduler.base_lrs)
        if distributed.rank() != 0:  # the other processes keep their own minibatch and dropout streams
            state = {**state, "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        self.load_state_dict(state)
        self.scheduler.base_lrs = base
        lrs = [lr * lam(self.scheduler.last_epoch) for lr, lam in zip(base, self.scheduler.lr_lambdas, strict=True)]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.scheduler._last_lr = lrs
