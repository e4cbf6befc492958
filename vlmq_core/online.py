"""Offline-to-online: the agent keeps learning from its own play (``vlmq online``; METHOD.md "Data and
exploration", the paper's Figures 5-6).

A run is a number of epochs. The first ``online.offline_epochs`` only train (the paper's "collect from epoch
50"); every later epoch

1. collects ``steps_per_env`` steps in each of ``collect.num_envs`` environments with the current policy (one
   batched ``generate`` per step; episodes carry over from one epoch to the next), each turn's strategy drawn
   per turn: with probability epsilon an exploration strategy (``random``, ``min_format``, ``oracle``, mixed by
   ``explore`` weights), else ``agent``; every finished episode goes to the FIFO buffer (``run_dir/buffer``),
2. runs ``updates_per_epoch`` updates of the run's loss (:class:`vlmq_core.trainer.Trainer`) once the buffer
   holds ``min_buffer_turns`` turns,
3. evaluates every ``eval_every`` epochs on held-out seeds (``agent`` only; never written to the buffer),
4. writes one metrics row (``metrics.jsonl``, ``docs/METRICS.md``) and a checkpoint.

Nothing is lost to a kill: the checkpoint (written atomically at the end of each epoch) holds the weights, the
optimizer, PopArt and whitening, every schedule's position, the RNG states, the next environment seed and the
episodes in flight (their turns so far and their generators). Resuming replays those episodes' recorded
replies to rebuild their environments, then plays on exactly as the uninterrupted run would. Episode ids are
``online-<seed>``, and an episode the killed run already stored is not stored again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmq_core import config, distributed, hardware
from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, EnvSlots, EvalConfig, evaluate
from vlmq_core.config import ConfigError, check_fields, require
from vlmq_core.envs.oracles import OracleConfig
from vlmq_core.model import Policy
from vlmq_core.progress import bar as progress_bar
from vlmq_core.rundir import RunDir
from vlmq_core.trainer import Trainer
from vlmq_core.turns import Turn

EXPLORATION_STRATEGIES = ("random", "min_format", "oracle")
"""Strategies an exploration turn may use (``partial`` comes with the web tasks)."""


@dataclass
class ExploreConfig:
    """Exploration prompting, decided per turn (METHOD.md "Data and exploration"): with probability epsilon a
    turn uses an exploration strategy drawn by the weights below, else ``agent``. The defaults are the paper's Gym
    Cards schedule; BabyAI's is in :data:`vlmq_core.run.PRESETS`."""

    epsilon_start: float = 0.35
    """Epsilon in the first collecting epoch."""
    epsilon_end: float = 0.05
    """Epsilon after ``decay_epochs`` collecting epochs."""
    decay_epochs: int = 50
    """Collecting epochs over which epsilon decays linearly."""
    random: float = 1.0
    """Weight of ``random``: a random valid action written as text."""
    min_format: float = 0.0
    """Weight of ``min_format``: the model writes the reply with ``[action]`` prefilled."""
    oracle: float = 0.0
    """Weight of ``oracle``: the task's oracle, corrupted at ``corrupt_rate``."""
    corrupt_rate: float = 0.5
    """``oracle`` turns: probability that the oracle's action is replaced by a random valid one."""

    def __post_init__(self) -> None:
        check_fields(self, "online.explore.")
        unit, non_negative = (lambda v: 0 <= v <= 1, "in [0, 1]"), (lambda v: v >= 0, ">= 0")
        rules = {"epsilon_start": unit, "epsilon_end": unit, "corrupt_rate": unit, "decay_epochs": non_negative}
        require(self, "online.explore.", rules | dict.fromkeys(EXPLORATION_STRATEGIES, non_negative))
        if sum(self.weights.values()) <= 0 and max(self.epsilon_start, self.epsilon_end) > 0:
            raise ConfigError(
                "online.explore: epsilon > 0 needs a positive weight on random, min_format or oracle "
                "(or set epsilon_start and epsilon_end to 0)."
            )

    @property
    def weights(self) -> dict[str, float]:
        return {s: getattr(self, s) for s in EXPLORATION_STRATEGIES}

    def epsilon(self, collecting_epoch: int) -> float:
        """Epsilon of the `collecting_epoch`-th collecting epoch (0-based): linear, then flat."""
        if self.decay_epochs == 0:
            return self.epsilon_end
        frac = min(1.0, collecting_epoch / self.decay_epochs)
        return self.epsilon_start + (self.epsilon_end - self.epsilon_start) * frac

    def draw(self, rng: np.random.Generator, epsilon: float) -> str:
        """One turn's strategy. Always draws the same numbers from `rng` (a uniform, then a choice), so an
        episode's generator advances the same whatever is chosen."""
        explore = rng.random() < epsilon
        w = np.array(list(self.weights.values()), dtype=float)
        pick = int(rng.choice(len(w), p=w / w.sum())) if w.sum() > 0 else 0
        return EXPLORATION_STRATEGIES[pick] if explore else "agent"


@dataclass
class OnlineConfig:
    """The offline-to-online loop (``vlmq online``): epochs of collection, updates and evaluation (METHOD.md
    Tables 2-3). The defaults are the paper's Gym Cards schedule; what its schedules per task change from them is
    the presets, :data:`vlmq_core.run.PRESETS` (``gym-cards-paper``, ``babyai-paper``)."""

    epochs: int = 75
    """Epochs in all, the offline ones included."""
    offline_epochs: int = 0
    """Epochs that only train, on the dataset, before the first collection (the paper's "collect from epoch N")."""
    steps_per_env: int = 96
    """Environment steps per environment per collecting epoch."""
    updates_per_epoch: int = 512
    """Optimizer updates per epoch. ``train.steps`` is not used by online runs."""
    use_dataset: bool = True
    """Start the buffer with the dataset's turns (``data.path``, built by ``vlmq collect``); false: start empty."""
    init_from: str | None = None
    """A run directory (or checkpoint folder; ``vlmq train``'s or ``vlmq online``'s) the run continues from: its
    LoRA and critic weights, update counter, optimizer moments and RNG states, with this run's learning rates.
    None: the model as loaded, with fresh heads."""
    buffer_turns: int | None = 50_000
    """FIFO cap of the run's buffer in turns; None: no cap."""
    min_buffer_turns: int = 0
    """No update before the buffer holds this many turns."""
    eval_every: int = 5
    """Evaluate (``eval.episodes`` on seeds from ``eval.seed``) every this many epochs, and after the last one and
    the last offline one; 0: only after the last."""
    seed: int = 1_000_000
    """Environment seed of the first online episode (the next ones count up); keep it clear of the dataset's and
    the evaluation's seeds."""
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    """Exploration prompting and its epsilon schedule."""

    def __post_init__(self) -> None:
        check_fields(self, "online.")
        non_negative = (lambda v: v >= 0, ">= 0")
        rules = dict.fromkeys(
            ("epochs", "steps_per_env", "updates_per_epoch", "min_buffer_turns", "eval_every"), non_negative
        )
        rules["offline_epochs"] = (lambda v: 0 <= v <= self.epochs, f"in [0, online.epochs = {self.epochs}]")
        rules["buffer_turns"] = (lambda v: v is None or v >= 1, ">= 1 (or null: no cap)")
        require(self, "online.", rules)
        if self.offline_epochs and not self.use_dataset:
            raise ConfigError("online.offline_epochs > 0 trains on the dataset: set online.use_dataset=true.")

    def collects(self, epoch: int) -> bool:
        return epoch >= self.offline_epochs and self.steps_per_env > 0

    def evaluates(self, epoch: int) -> bool:
        """Whether epoch `epoch` (0-based) ends with an evaluation."""
        n = epoch + 1
        return n == self.epochs or n == self.offline_epochs or (self.eval_every > 0 and n % self.eval_every == 0)


# ---- the loop -----------------------------------------------------------------------------------------------


@dataclass
class OnlineState:
    """Where an online run stands (saved with every checkpoint as ``online.pt``)."""

    epoch: int = 0
    """Epochs completed."""
    next_seed: int = 0
    """Environment seed of the next episode to start."""
    env_steps: int = 0
    """Environment steps taken by collection so far (all environments)."""
    episodes: int = 0
    """Online episodes finished so far."""
    slots: list[dict | None] = field(default_factory=list)
    """The episodes in flight: seed, episode id, turns so far (as dicts), the generator's state; None when free."""


@dataclass
class OnlineResult:
    """What :func:`online_loop` leaves: the policy, one metrics row per epoch, and the last evaluation."""

    policy: Any
    history: list[dict[str, Any]]
    eval: dict[str, Any] | None


@contextlib.contextmanager
def _rng_kept():
    """Run a block (an evaluation) without moving torch's global generator: evaluating changes no later sample."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each numeric key over an epoch's update rows (``step`` and ``time/`` left out)."""
    keys = [k for k in rows[0] if k != "step" and not k.startswith("time/")] if rows else []
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), int | float)]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def _slot_state(slot) -> dict | None:
    if slot is None:
        return None
    return {
        "seed": slot.seed,
        "episode_id": slot.episode_id,
        "turns": [dataclasses.asdict(t) for t in slot.turns],
        "rng": slot.rng.bit_generator.state,
    }


OFFLINE_CHECKPOINT = "checkpoint-offline"
"""Where an online run keeps its checkpoint from the end of the offline epochs (``vlmq eval`` reads it)."""


def buffer_dir(run_dir: str | Path, rank: int, world_size: int) -> Path:
    """The buffer folder of one process: ``run_dir/buffer`` alone, ``run_dir/buffer-<rank>`` with several."""
    return Path(run_dir) / ("buffer" if world_size == 1 else f"buffer-{rank}")


def online_loop(
    policy: Policy,
    trainer: Trainer,
    buffer: TurnBuffer,
    online: OnlineConfig,
    collect: CollectConfig,
    evaluation: EvalConfig,
    run: RunDir,
    state: OnlineState,
    history: list[dict[str, Any]],
    progress: bool = True,
) -> OnlineResult:
    """Run epochs from ``state.epoch`` to ``online.epochs`` (see the module's docstring): a policy, its trainer
    and this process's buffer, composed and resumed by :func:`vlmq_core.run.online`; `history` holds the rows of
    the epochs done. Every file goes through `run` (one metrics row and a checkpoint per epoch).

    With several processes each collects with its own environments and seeds (the ``seed + rank``-th, then every
    ``world_size``-th) into its own buffer, gradients and head statistics are reduced over processes, evaluation
    episodes are split and pooled, and only the main process writes (the checkpoint holds every process's
    collection state)."""
    world, main = distributed.world_size(), distributed.is_main()
    explore = online.explore
    oracle_cfg = OracleConfig(explore.corrupt_rate)
    last_eval = next((r for r in reversed(history) if "eval/success" in r), None)
    bar = progress_bar(
        total=online.epochs, initial=state.epoch, desc=f"online {collect.task}", disable=not (progress and main)
    )
    envs = EnvSlots(collect, collect.num_envs, policy) if online.epochs > online.offline_epochs else None
    try:
        if envs is not None:
            for i, slot in enumerate(state.slots):
                if slot is not None:
                    turns = [Turn(**t) for t in slot["turns"]]
                    envs.replay(i, slot["seed"], slot["episode_id"], turns, slot["rng"])
        while state.epoch < online.epochs:
            epoch, t_epoch = state.epoch, time.perf_counter()
            label = f"online {collect.task}, epoch {epoch + 1}"  # what the bar shows while the epoch runs
            row: dict[str, Any] = {"epoch": epoch + 1}
            if online.collects(epoch):
                t0 = time.perf_counter()
                played = _collect_epoch(envs, state, policy, online, buffer, oracle_cfg, world, bar, label)
                row |= _online_metrics(distributed.gather(played), explore.epsilon(epoch - online.offline_epochs))
                row["time/generate_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            updates = []
            ready = len(buffer) >= max(1, online.min_buffer_turns) and bool(buffer.transitions())
            if all(distributed.gather(ready)):  # every process updates, or none: the updates are collective
                if trainer.whitening_active and int(policy.whiten.refreshes) == 0:
                    trainer.calibrate_critic_inputs(progress=False)
                for u in range(online.updates_per_epoch):
                    bar.set_description(f"{label}: update {u + 1}/{online.updates_per_epoch}")
                    updates.append(trainer.train_step())
            row |= _mean_rows(updates)
            row["time/train_s"] = time.perf_counter() - t0
            if online.evaluates(epoch) and evaluation.episodes:
                bar.set_description(f"{label}: evaluating")
                t0 = time.perf_counter()
                with _rng_kept():
                    last_eval = evaluate(policy, collect, evaluation, progress=False)
                row |= last_eval
                row["time/eval_s"] = time.perf_counter() - t0
            state.epoch += 1
            counts = distributed.gather((state.env_steps, state.episodes, buffer.stats()))
            row |= {
                "online/updates": trainer.step,
                "online/env_steps": sum(c[0] for c in counts),
                "online/episodes": sum(c[1] for c in counts),
                **_pool_buffer_stats([c[2] for c in counts]),
                "time/epoch_s": time.perf_counter() - t_epoch,
            }
            state.slots = [_slot_state(s) for s in envs.slots] if envs is not None else []
            mine = {"online": vars(state), "numpy_rng": trainer.rng.bit_generator.state}
            ranks = distributed.gather(mine | {"torch_rng": torch.get_rng_state()})
            history.append(row)
            # the row first: a kill before the checkpoint lands leaves a row that resuming drops and rewrites
            run.log(row, step=state.epoch)
            online_state = {"world_size": world, "ranks": ranks}
            folder = run.save_checkpoint(policy, {"trainer.pt": trainer.state_dict(), "online.pt": online_state})
            if state.epoch == online.offline_epochs:  # the offline result, kept to compare with the online one
                run.keep_copy(folder, OFFLINE_CHECKPOINT)
            distributed.barrier()
            bar.set_description(f"online {collect.task}")
            bar.update(1)
            if last_eval is not None:
                bar.set_postfix(success=f"{last_eval['eval/success']:.2f}", updates=trainer.step)
    finally:
        bar.close()
        if envs is not None:
            envs.close()
    buffer.flush()
    if last_eval is not None:
        settings = {
            "epoch": state.epoch,
            "step": trainer.step,
            "task": collect.task,
            "eval": config.to_dict(evaluation),
        }
        run.write_json(RunDir.EVAL, settings | {"hardware": hardware.describe(), **last_eval})
    return OnlineResult(policy, history, last_eval)


@dataclass
class Played:
    """What one process's collection did in one epoch (pooled over processes into the ``online/`` metrics)."""

    results: list = field(default_factory=list)
    """EpisodeResult of each episode that finished."""
    turns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("agent", *EXPLORATION_STRATEGIES), 0))
    """Turns taken per strategy."""
    agent_valid: list[bool] = field(default_factory=list)
    """Whether each ``agent`` turn was valid."""


def _collect_epoch(
    envs, state: OnlineState, policy, ocfg: OnlineConfig, buffer, oracle_cfg, world: int, bar, label: str
) -> Played:
    """``steps_per_env`` batched steps of every environment; finished episodes go to the buffer (unless a killed
    run already stored them). New episodes take this process's next seed (every `world`-th). `bar` shows the step."""
    epsilon = ocfg.explore.epsilon(state.epoch - ocfg.offline_epochs)
    names = {"agent": policy.name, "min_format": policy.name, "random": "random"}
    names["oracle"] = f"oracle@{oracle_cfg.corrupt_rate:g}"
    played = Played()
    for step in range(ocfg.steps_per_env):
        bar.set_description(f"{label}: collecting step {step + 1}/{ocfg.steps_per_env}")
        for i, slot in enumerate(envs.slots):
            if slot is None:
                envs.start(i, state.next_seed, episode_id=f"online-{state.next_seed}")
                state.next_seed += world
        active = envs.active
        strategies = [ocfg.explore.draw(envs.slots[i].rng, epsilon) for i in active]
        done = envs.step(strategies, [names[s] for s in strategies], oracle_cfg)
        state.env_steps += len(active)
        for turn in envs.last_turns:
            played.turns[turn.strategy] += 1
            if turn.strategy == "agent":
                played.agent_valid.append(turn.valid)
        for _, turns, result in done:
            if not buffer.has_episode(result.episode_id):
                buffer.add(turns)
            played.results.append(result)
            state.episodes += 1
    return played


def _online_metrics(parts: list[Played], epsilon: float) -> dict[str, float]:
    """The epoch's ``online/`` metrics from every process's :class:`Played`."""
    results = [r for p in parts for r in p.results]
    valid = [v for p in parts for v in p.agent_valid]
    turns = {s: sum(p.turns[s] for p in parts) for s in parts[0].turns}
    taken = sum(turns.values())
    nan = math.nan
    return {
        "online/epsilon": epsilon,
        "online/episodes_done": len(results),
        "online/success": float(np.mean([r.success for r in results])) if results else nan,
        "online/return": float(np.mean([r.ret for r in results])) if results else nan,
        "online/agent_valid": float(np.mean(valid)) if valid else nan,
        "online/explore_frac": 1 - turns["agent"] / taken if taken else nan,
        **{f"online/turns_{s}": n for s, n in turns.items()},
    }


def _pool_buffer_stats(stats: list[dict]) -> dict:
    """Every process's :meth:`TurnBuffer.stats` as one: counts summed, fractions weighted by turns or episodes."""
    if len(stats) == 1:
        return stats[0]
    turns = sum(s["buffer/turns"] for s in stats)
    episodes = sum(s["buffer/episodes"] for s in stats)

    def weighted(key: str, weight: str) -> float:
        pairs = [(s[key], s[weight]) for s in stats if not math.isnan(s[key])]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else math.nan

    def summed(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in stats:
            for k, n in s[key].items():
                out[k] = out.get(k, 0) + n
        return out

    return {
        "buffer/turns": turns,
        "buffer/episodes": episodes,
        "buffer/valid_frac": weighted("buffer/valid_frac", "buffer/turns"),
        "buffer/mean_return": weighted("buffer/mean_return", "buffer/episodes"),
        "buffer/success_frac": weighted("buffer/success_frac", "buffer/episodes"),
        "buffer/by_source": summed("buffer/by_source"),
        "buffer/by_strategy": summed("buffer/by_strategy"),
    }
