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
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmq_core.config import ConfigError, check_fields

if TYPE_CHECKING:
    from vlmq_core.run import RunConfig

EXPLORATION_STRATEGIES = ("random", "min_format", "oracle")
"""Strategies an exploration turn may use (``partial`` comes with the web tasks)."""


@dataclass
class ExploreConfig:
    """Exploration prompting, decided per turn (METHOD.md "Data and exploration"): with probability epsilon a
    turn uses an exploration strategy drawn by the weights below, else ``agent``."""

    epsilon_start: float = 0.35
    """Epsilon in the first collecting epoch (Gym Cards .35, BabyAI 1.0)."""
    epsilon_end: float = 0.05
    """Epsilon after ``decay_epochs`` collecting epochs (Gym Cards .05, BabyAI .1)."""
    decay_epochs: int = 50
    """Collecting epochs over which epsilon decays linearly (Gym Cards 50, BabyAI 300)."""
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
        if not (0 <= self.epsilon_start <= 1 and 0 <= self.epsilon_end <= 1 and 0 <= self.corrupt_rate <= 1):
            raise ConfigError(f"online.explore: epsilons and corrupt_rate must be in [0, 1]: {self}.")
        if self.decay_epochs < 0 or min(self.weights.values()) < 0:
            raise ConfigError(f"online.explore: decay_epochs and the weights must be >= 0: {self}.")
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
    Tables 2-3; the paper's schedules are the presets ``gym-cards-paper`` and ``babyai-paper``)."""

    epochs: int = 75
    """Epochs in all, the offline ones included (NumberLine 75, Blackjack 200, BabyAI 600)."""
    offline_epochs: int = 0
    """Epochs that only train, on the dataset, before the first collection (Gym Cards 50, BabyAI 0)."""
    steps_per_env: int = 96
    """Environment steps per environment per collecting epoch (Gym Cards 96, BabyAI 150)."""
    updates_per_epoch: int = 512
    """Optimizer updates per epoch (Tables 2-3: 512). ``train.steps`` is not used by online runs."""
    use_dataset: bool = True
    """Start the buffer with the dataset's turns (``data.path``, built by ``vlmq collect``); false: start empty."""
    init_from: str | None = None
    """A run directory (or checkpoint folder) whose LoRA and critic weights the run starts from; None: the model
    as loaded, with fresh heads."""
    buffer_turns: int | None = 50_000
    """FIFO cap of the run's buffer in turns (Gym Cards 50k, BabyAI 100k); None: no cap."""
    min_buffer_turns: int = 0
    """No update before the buffer holds this many turns (BabyAI 5k)."""
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
        if self.epochs < 0 or not 0 <= self.offline_epochs <= self.epochs:
            raise ConfigError(f"online.offline_epochs must be in [0, online.epochs]: {self}.")
        if self.steps_per_env < 0 or self.updates_per_epoch < 0 or self.min_buffer_turns < 0 or self.eval_every < 0:
            raise ConfigError(f"online: steps, updates, buffer sizes and eval_every must be >= 0: {self}.")
        if self.offline_epochs and not self.use_dataset:
            raise ConfigError("online.offline_epochs > 0 trains on the dataset: set online.use_dataset=true.")

    def collects(self, epoch: int) -> bool:
        return epoch >= self.offline_epochs and self.steps_per_env > 0

    def evaluates(self, epoch: int) -> bool:
        """Whether epoch `epoch` (0-based) ends with an evaluation."""
        n = epoch + 1
        return n == self.epochs or n == self.offline_epochs or (self.eval_every > 0 and n % self.eval_every == 0)


PRESETS: dict[str, dict[str, Any]] = {
    "gym-cards-paper": {
        "online": {
            "epochs": 75,
            "offline_epochs": 50,
            "steps_per_env": 96,
            "updates_per_epoch": 512,
            "buffer_turns": 50_000,
            "min_buffer_turns": 0,
            "explore": {"epsilon_start": 0.35, "epsilon_end": 0.05, "decay_epochs": 50},
        },
        "collect": {"num_envs": 6, "temperature": 0.4, "max_reply_tokens": 24},
        "train": {
            "batch_size": 3,
            "grad_accum": 4,
            "lr_lora": 1e-4,
            "lr_critic": 6e-4,
            "warmup_lora": 250,
            "warmup_critic": 100,
            "tau": 0.008,
        },
        "loss": {"critic_weight": 1.0, "gamma": 0.995},
    },
    "babyai-paper": {
        "online": {
            "epochs": 600,
            "offline_epochs": 0,
            "steps_per_env": 150,
            "updates_per_epoch": 512,
            "buffer_turns": 100_000,
            "min_buffer_turns": 5_000,
            "use_dataset": False,
            "explore": {"epsilon_start": 1.0, "epsilon_end": 0.1, "decay_epochs": 300},
        },
        "collect": {"num_envs": 6, "temperature": 0.4, "max_reply_tokens": 24},
        "train": {
            "batch_size": 3,
            "grad_accum": 4,
            "lr_lora": 1e-4,
            "lr_critic": 8e-4,
            "warmup_lora": 500,
            "warmup_critic": 50,
            "tau": 0.008,
        },
        "loss": {"critic_weight": 8.0, "gamma": 0.995},
    },
}
"""Named starting points for a config file's ``preset:`` key (the file's own keys, then overrides, win). The
paper's schedules per GPU (it ran 2 GPUs; METHOD.md Tables 2-3); the CPU-sized ones are the config files in
``configs/`` that name one of these and shrink it."""


def merge_preset(data: dict[str, Any]) -> dict[str, Any]:
    """A config file's mapping with its ``preset:`` key (if any) replaced by the preset's values underneath."""
    data = dict(data)
    name = data.pop("preset", None)
    if name is None:
        return data
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}: the presets are {', '.join(PRESETS)}.")

    def deep(base: dict, top: dict) -> dict:
        out = dict(base)
        for k, v in top.items():
            out[k] = deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return deep(PRESETS[name], data)


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
    """What :func:`run_online` leaves: the policy, one metrics row per epoch, and the last evaluation."""

    policy: Any
    history: list[dict[str, Any]]
    eval: dict[str, Any] | None


@contextlib.contextmanager
def _rng_kept():
    """Run a block (an evaluation) without moving torch's global generator: evaluating changes no later sample."""
    import torch

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


def run_online(cfg: RunConfig, progress: bool = True) -> OnlineResult:
    """Run (or resume) the online run of `cfg` to ``online.epochs`` epochs; see the module's docstring."""
    import torch
    from tqdm.auto import tqdm

    from vlmq_core import config, hardware
    from vlmq_core.buffer import TurnBuffer
    from vlmq_core.collect import EnvSlots, evaluate
    from vlmq_core.envs.oracles import OracleConfig
    from vlmq_core.model import load_policy
    from vlmq_core.report import Reporter
    from vlmq_core.run import check_resumable, open_dataset, policy_config, write_json
    from vlmq_core.trainer import Trainer, find_checkpoint, load_history, write_checkpoint
    from vlmq_core.turns import Turn

    ocfg, explore = cfg.online, cfg.online.explore
    run_dir = Path(cfg.run_dir)
    check_resumable(cfg)
    checkpoint = find_checkpoint(run_dir, "online.pt")
    buffer = TurnBuffer(run_dir / "buffer", max_turns=ocfg.buffer_turns)
    dataset = open_dataset(cfg, must_exist=True) if ocfg.use_dataset else None
    if dataset is not None and checkpoint is None and len(buffer) == 0:
        buffer.add(dataset.turns)  # one shard: a kill leaves all of it or none
    if dataset is None and cfg.critic.init_q == "min_return_to_go":
        raise ConfigError(
            "critic.init_q=min_return_to_go is computed from the dataset, and online.use_dataset is false: give "
            "critic.init_q a number (e.g. the task's lowest return) or null."
        )
    torch.manual_seed(cfg.train.seed)
    policy = load_policy(policy_config(cfg, dataset))
    if ocfg.init_from and checkpoint is None:
        source = Path(ocfg.init_from)
        folder = find_checkpoint(source) or (source if (source / "critic.safetensors").is_file() else None)
        if folder is None:
            raise ConfigError(f"online.init_from: {source} holds no checkpoint (run `vlmq train` there first).")
        policy.load(folder)
    trainer = Trainer(policy, buffer, cfg.train, cfg.loss, run_dir=None)
    state = OnlineState(next_seed=ocfg.seed)
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        policy.load(checkpoint)
        trainer.load_state_dict(torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=False))
        state = OnlineState(**torch.load(checkpoint / "online.pt", map_location="cpu", weights_only=False))
        history = load_history(run_dir, up_to=state.epoch, key="epoch")
        print(f"Resumed {run_dir} after epoch {state.epoch}/{ocfg.epochs} (update {trainer.step}).")
    config.write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
    config.save(cfg, run_dir / "config.yaml")
    reporter = Reporter(run_dir, cfg.train.report_to, config.to_dict(cfg), start=state.epoch)
    oracle_cfg = OracleConfig(explore.corrupt_rate)
    last_eval = next((r for r in reversed(history) if "eval/success" in r), None)
    bar = tqdm(total=ocfg.epochs, initial=state.epoch, desc=f"online {cfg.collect.task}", disable=not progress)
    envs = EnvSlots(cfg.collect, cfg.collect.num_envs, policy) if ocfg.epochs > ocfg.offline_epochs else None
    try:
        if envs is not None:
            for i, saved in enumerate(state.slots):
                if saved is not None:
                    turns = [Turn(**t) for t in saved["turns"]]
                    envs.replay(i, saved["seed"], saved["episode_id"], turns, saved["rng"])
        while state.epoch < ocfg.epochs:
            epoch, t_epoch = state.epoch, time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1}
            if ocfg.collects(epoch):
                t0 = time.perf_counter()
                row |= _collect_epoch(envs, state, policy, cfg, buffer, oracle_cfg, epoch)
                row["time/generate_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            updates = []
            if len(buffer) >= max(1, ocfg.min_buffer_turns) and buffer.transitions():
                if trainer.whitening_active and int(policy.whiten.refreshes) == 0:
                    trainer.calibrate_critic_inputs(progress=False)
                updates = [trainer.train_step() for _ in range(ocfg.updates_per_epoch)]
            row |= _mean_rows(updates)
            row["time/train_s"] = time.perf_counter() - t0
            if ocfg.evaluates(epoch) and cfg.eval.episodes:
                t0 = time.perf_counter()
                with _rng_kept():
                    last_eval = evaluate(policy, cfg.collect, cfg.eval, progress=False)
                row |= last_eval
                row["time/eval_s"] = time.perf_counter() - t0
            state.epoch += 1
            row |= {
                "online/updates": trainer.step,
                "online/env_steps": state.env_steps,
                "online/episodes": state.episodes,
                **buffer.stats(),
                "time/epoch_s": time.perf_counter() - t_epoch,
            }
            # the row first: a kill before the checkpoint lands leaves a row that resuming drops and writes again
            history.append(row)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            state.slots = [_slot_state(s) for s in envs.slots] if envs is not None else []
            write_checkpoint(run_dir, policy, {"trainer.pt": trainer.state_dict(), "online.pt": vars(state)})
            reporter.log(row, step=state.epoch)
            bar.update(1)
            if last_eval is not None:
                bar.set_postfix(success=f"{last_eval['eval/success']:.2f}", updates=trainer.step)
    finally:
        bar.close()
        reporter.close()
        if envs is not None:
            envs.close()
    buffer.flush()
    if last_eval is not None:
        write_json(
            run_dir / "eval.json",
            {"epoch": state.epoch, "step": trainer.step, "task": cfg.collect.task, "eval": config.to_dict(cfg.eval)}
            | {"hardware": hardware.describe(), **last_eval},
        )
    return OnlineResult(policy, history, last_eval)


def _collect_epoch(envs, state: OnlineState, policy, cfg: RunConfig, buffer, oracle_cfg, epoch: int) -> dict:
    """``steps_per_env`` batched steps of every environment; finished episodes go to the buffer (unless a killed
    run already stored them). Returns the epoch's ``online/`` metrics."""
    ocfg = cfg.online
    epsilon = ocfg.explore.epsilon(epoch - ocfg.offline_epochs)
    names = {"agent": policy.name, "min_format": policy.name, "random": "random"}
    names["oracle"] = f"oracle@{oracle_cfg.corrupt_rate:g}"
    finished, by_strategy, agent_valid = [], dict.fromkeys(("agent", *EXPLORATION_STRATEGIES), 0), []
    for _ in range(ocfg.steps_per_env):
        for i, slot in enumerate(envs.slots):
            if slot is None:
                envs.start(i, state.next_seed, episode_id=f"online-{state.next_seed}")
                state.next_seed += 1
        active = envs.active
        strategies = [ocfg.explore.draw(envs.slots[i].rng, epsilon) for i in active]
        done = envs.step(strategies, [names[s] for s in strategies], oracle_cfg)
        state.env_steps += len(active)
        for turn in envs.last_turns:
            by_strategy[turn.strategy] += 1
            if turn.strategy == "agent":
                agent_valid.append(turn.valid)
        for _, turns, result in done:
            if not buffer.has_episode(result.episode_id):
                buffer.add(turns)
            finished.append(result)
            state.episodes += 1
    turns_taken = sum(by_strategy.values())
    nan = math.nan
    return {
        "online/epsilon": epsilon,
        "online/episodes_done": len(finished),
        "online/success": float(np.mean([r.success for r in finished])) if finished else nan,
        "online/return": float(np.mean([r.ret for r in finished])) if finished else nan,
        "online/agent_valid": float(np.mean(agent_valid)) if agent_valid else nan,
        "online/explore_frac": 1 - by_strategy["agent"] / turns_taken if turns_taken else nan,
        **{f"online/turns_{s}": n for s, n in by_strategy.items()},
    }
