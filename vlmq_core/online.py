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
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmq_core.config import ConfigError, check_fields

if TYPE_CHECKING:
    from vlmq_core.collect import SourceConfig
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
    """A run directory (or checkpoint folder; ``vlmq train``'s or ``vlmq online``'s) the run continues from: its
    LoRA and critic weights, update counter, optimizer moments and RNG states, with this run's learning rates.
    None: the model as loaded, with fresh heads."""
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


OFFLINE_CHECKPOINT = "checkpoint-offline"
"""Where an online run keeps its checkpoint from the end of the offline epochs (``vlmq eval`` reads it)."""


def _copy_atomic(src: Path, dst: Path) -> None:
    import shutil

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def exploration_sources(cfg: RunConfig, episodes: int, seed: int) -> list[SourceConfig]:
    """The run's exploration strategies that play without the model (``random``, ``oracle`` at the run's
    corruption rate), as sources on the held-out seeds: what the agent's own play has to beat."""
    from vlmq_core.collect import SourceConfig

    explore = cfg.online.explore
    return [
        SourceConfig(name, episodes, seed, corrupt_rate=explore.corrupt_rate if name == "oracle" else 0.0)
        for name in ("random", "oracle")
        if explore.weights[name] > 0
    ]


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """The update a checkpoint folder was saved at (its ``trainer.pt``); None for a folder without one."""
    import torch

    path = Path(folder) / "trainer.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"])  # mapped, not read


def score_run(
    cfg: RunConfig,
    episodes: int,
    seed: int,
    progress: bool = True,
    include_base: bool = False,
    include_exploration: bool = False,
) -> dict[str, dict[str, float]]:
    """Evaluate an online run's checkpoints on `episodes` held-out episodes from `seed`: ``offline`` (end of the
    offline epochs, or the run it continued: ``online.init_from``), ``online`` (the last), with `include_base` the
    untrained model, and with `include_exploration` each exploration strategy that plays without the model (named
    as a turn's source: ``random``, ``oracle@0.5``). Each evaluation is cached as
    ``run_dir/score-<name>-s<seed>-n<episodes>.json`` (a re-run notebook reuses it)."""
    from vlmq_core import config, distributed, hardware
    from vlmq_core.collect import EvalConfig, collect, evaluate, source_name, summarize
    from vlmq_core.model import PolicyConfig, load_checkpoint, load_policy
    from vlmq_core.run import write_json
    from vlmq_core.trainer import find_checkpoint

    run_dir = Path(cfg.run_dir)
    eval_cfg = EvalConfig(episodes, seed, cfg.eval.num_envs)

    def play_source(source: SourceConfig) -> dict[str, Any]:
        results = collect(None, cfg.collect, source, progress=progress)
        return summarize(results, prefix="eval") | {"source": config.to_dict(source)}

    def play_checkpoint(folder: Path | None) -> dict[str, Any]:
        if folder is None:
            policy = load_policy(PolicyConfig(model=cfg.model, lora=cfg.lora))
        else:
            policy = load_checkpoint(folder)
        record = evaluate(policy, cfg.collect, eval_cfg, progress=progress)
        return record | {"hardware": hardware.describe(), "eval": config.to_dict(eval_cfg)}

    plays: dict[str, Callable[[], dict[str, Any]]] = {}
    for source in exploration_sources(cfg, episodes, seed) if include_exploration else []:
        plays[source_name(None, source)] = functools.partial(play_source, source)
    if include_base:
        plays["base"] = functools.partial(play_checkpoint, None)
    folders = {}  # the checkpoints scored, by name
    if (run_dir / OFFLINE_CHECKPOINT).is_dir():
        folders["offline"] = run_dir / OFFLINE_CHECKPOINT
    elif cfg.online.init_from:  # the run continued another one: that one's checkpoint is the offline result
        folders["offline"] = find_checkpoint(Path(cfg.online.init_from)) or Path(cfg.online.init_from)
    folders["online"] = run_dir / "checkpoint"
    for name, folder in folders.items():
        plays[name] = functools.partial(play_checkpoint, folder)
    scores = {}
    for name, play in plays.items():
        path = run_dir / f"score-{name}-s{seed}-n{episodes}.json"
        # A checkpoint's score names the update it was taken at: a run continued to more epochs is scored again.
        step = checkpoint_step(folders[name]) if name in folders else None
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("checkpoint_step") == step:
                scores[name] = cached
                continue
        scores[name] = play() | {"task": cfg.collect.task, "seed": seed, "checkpoint_step": step}
        if distributed.is_main():
            write_json(path, scores[name])
    return scores


HEADLINE = ("success", "success_se", "valid", "return", "length", "episodes")
"""The evaluation keys (``eval/<key>``) an experiment record keeps."""


def online_experiment(
    cfg: RunConfig,
    episodes: int,
    seed: int,
    include_base: bool = False,
    include_exploration: bool = False,
    offline: RunConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One task of notebook 04: build the dataset (when the run uses one); when `offline` is given, train that
    ``vlmq train`` run (reused when done, as notebook 03 leaves it) and continue it online (``online.init_from``),
    else run the online loop as configured; score the offline and final checkpoints (the base model with
    `include_base`, the model-free exploration strategies with `include_exploration`, under ``exploration``) on
    `episodes` held-out episodes from `seed`. Returns a record for the metrics file (``history`` holds the
    per-epoch rows, for the curves). Every step resumes: a re-run notebook reuses the dataset, the runs and the
    scores on disk."""
    from vlmq_core import hardware
    from vlmq_core.run import collect_data

    t0 = time.perf_counter()
    data = collect_data(cfg, progress=progress).stats() if cfg.online.use_dataset else None
    if offline is not None:
        from vlmq_core import config
        from vlmq_core.run import train

        if offline.data.path != cfg.data.path:
            raise ConfigError(f"The offline run trains on {offline.data.path} and the online run on {cfg.data.path}.")
        train(offline, progress=progress)
        cfg = config.apply_overrides(cfg, {"online.init_from": offline.run_dir})
    result = run_online(cfg, progress=progress)
    scores = score_run(cfg, episodes, seed, progress, include_base, include_exploration)
    headline = {name: {k: score[f"eval/{k}"] for k in HEADLINE} for name, score in scores.items()}
    last = result.history[-1]
    return {
        "task": cfg.collect.task,
        "model": result.policy.name,
        "hardware": hardware.describe(),
        "data": data,
        "init_from": cfg.online.init_from,
        **{name: v for name, v in headline.items() if name in ("base", "offline", "online")},
        "exploration": {name: v for name, v in headline.items() if name not in ("base", "offline", "online")},
        "eval_seed": seed,
        "env_steps": last["online/env_steps"],
        "updates": last["online/updates"],
        "epochs": last["epoch"],
        "train_wall_s": sum(r["time/epoch_s"] for r in result.history),
        "section_wall_s": time.perf_counter() - t0,
        "history": result.history,
    }


def buffer_dir(run_dir: str | Path, rank: int, world_size: int) -> Path:
    """The buffer folder of one process: ``run_dir/buffer`` alone, ``run_dir/buffer-<rank>`` with several."""
    return Path(run_dir) / ("buffer" if world_size == 1 else f"buffer-{rank}")


def run_online(cfg: RunConfig, progress: bool = True) -> OnlineResult:
    """Run (or resume) the online run of `cfg` to ``online.epochs`` epochs; see the module's docstring.

    With several processes (``accelerate launch``) each collects with its own environments and seeds (the
    ``seed + rank``-th, then every ``world_size``-th) into its own buffer (:func:`buffer_dir`), gradients and head
    statistics are reduced over processes, evaluation episodes are split and pooled, and only rank 0 writes the
    checkpoint (holding every process's collection state), the metrics and the progress bar."""
    import torch
    from tqdm.auto import tqdm

    from vlmq_core import config, distributed, hardware
    from vlmq_core.buffer import TurnBuffer
    from vlmq_core.collect import EnvSlots, evaluate
    from vlmq_core.envs.oracles import OracleConfig
    from vlmq_core.model import load_policy
    from vlmq_core.report import Reporter
    from vlmq_core.run import check_resumable, open_dataset, policy_config, write_json
    from vlmq_core.trainer import Trainer, find_checkpoint, load_history, write_checkpoint
    from vlmq_core.turns import Turn

    distributed.setup()
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    ocfg, explore = cfg.online, cfg.online.explore
    run_dir = Path(cfg.run_dir)
    check_resumable(cfg)
    checkpoint = find_checkpoint(run_dir, "online.pt")
    saved = torch.load(checkpoint / "online.pt", map_location="cpu", weights_only=False) if checkpoint else None
    if saved is not None and saved["world_size"] != world:
        raise ConfigError(
            f"{run_dir} was run by {saved['world_size']} processes and is continued by {world}: resume it with "
            f"--num_processes {saved['world_size']} (each process holds its own episodes in flight)."
        )
    buffer = TurnBuffer(buffer_dir(run_dir, rank, world), max_turns=ocfg.buffer_turns)
    dataset = open_dataset(cfg, must_exist=True) if ocfg.use_dataset else None
    if dataset is not None and checkpoint is None and len(buffer) == 0:
        buffer.add(dataset.turns)  # one shard: a kill leaves all of it or none
    if dataset is None and cfg.critic.init_q == "min_return_to_go":
        raise ConfigError(
            "critic.init_q=min_return_to_go is computed from the dataset, and online.use_dataset is false: give "
            "critic.init_q a number (e.g. the task's lowest return) or null."
        )
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every process
    policy = load_policy(policy_config(cfg, dataset))
    if ocfg.init_from and checkpoint is None:
        source = Path(ocfg.init_from)
        folder = find_checkpoint(source) or (source if (source / "policy.json").is_file() else None)
        if folder is None:
            raise ConfigError(f"online.init_from: {source} holds no checkpoint (run `vlmq train` there first).")
        policy.load(folder)
    trainer = Trainer(policy, buffer, cfg.train, cfg.loss, run_dir=None)
    if ocfg.init_from and checkpoint is None and (folder / "trainer.pt").is_file():
        trainer.continue_from(torch.load(folder / "trainer.pt", map_location="cpu", weights_only=False))
    state = OnlineState(next_seed=ocfg.seed + rank)
    history: list[dict[str, Any]] = []
    if saved is not None:
        policy.load(checkpoint)
        trainer.load_state_dict(torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=False))
        mine = saved["ranks"][rank]
        state = OnlineState(**mine["online"])
        trainer.rng.bit_generator.state = mine["numpy_rng"]
        torch.set_rng_state(mine["torch_rng"])
        history = load_history(run_dir, up_to=state.epoch, key="epoch")
        if main:
            print(f"Resumed {run_dir} after epoch {state.epoch}/{ocfg.epochs} (update {trainer.step}).")
    distributed.barrier()  # every process has read the checkpoint and the history before rank 0 writes
    reporter = None
    if main:
        config.write_text_atomic(run_dir / "metrics.jsonl", "".join(config.json_text(m) + "\n" for m in history))
        config.save(cfg, run_dir / "config.yaml")
        reporter = Reporter(run_dir, cfg.train.report_to, config.to_dict(cfg), start=state.epoch)
    oracle_cfg = OracleConfig(explore.corrupt_rate)
    last_eval = next((r for r in reversed(history) if "eval/success" in r), None)
    bar = tqdm(
        total=ocfg.epochs, initial=state.epoch, desc=f"online {cfg.collect.task}", disable=not (progress and main)
    )
    envs = EnvSlots(cfg.collect, cfg.collect.num_envs, policy) if ocfg.epochs > ocfg.offline_epochs else None
    try:
        if envs is not None:
            for i, slot in enumerate(state.slots):
                if slot is not None:
                    turns = [Turn(**t) for t in slot["turns"]]
                    envs.replay(i, slot["seed"], slot["episode_id"], turns, slot["rng"])
        while state.epoch < ocfg.epochs:
            epoch, t_epoch = state.epoch, time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1}
            if ocfg.collects(epoch):
                t0 = time.perf_counter()
                played = _collect_epoch(envs, state, policy, cfg, buffer, oracle_cfg, world)
                row |= _online_metrics(distributed.gather(played), explore.epsilon(epoch - ocfg.offline_epochs))
                row["time/generate_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            updates = []
            ready = len(buffer) >= max(1, ocfg.min_buffer_turns) and bool(buffer.transitions())
            if all(distributed.gather(ready)):  # every process updates, or none: the updates are collective
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
            if main:
                # the row first: a kill before the checkpoint lands leaves a row that resuming drops and rewrites
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(config.json_text(row) + "\n")
                online_state = {"world_size": world, "ranks": ranks}
                folder = write_checkpoint(
                    run_dir, policy, {"trainer.pt": trainer.state_dict(), "online.pt": online_state}
                )
                if state.epoch == ocfg.offline_epochs:  # the offline result, kept to compare with the online one
                    _copy_atomic(folder, run_dir / OFFLINE_CHECKPOINT)
                reporter.log(row, step=state.epoch)
            distributed.barrier()
            bar.update(1)
            if last_eval is not None:
                bar.set_postfix(success=f"{last_eval['eval/success']:.2f}", updates=trainer.step)
    finally:
        bar.close()
        if reporter is not None:
            reporter.close()
        if envs is not None:
            envs.close()
    buffer.flush()
    if last_eval is not None and main:
        write_json(
            run_dir / "eval.json",
            {"epoch": state.epoch, "step": trainer.step, "task": cfg.collect.task, "eval": config.to_dict(cfg.eval)}
            | {"hardware": hardware.describe(), **last_eval},
        )
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


def _collect_epoch(envs, state: OnlineState, policy, cfg: RunConfig, buffer, oracle_cfg, world: int) -> Played:
    """``steps_per_env`` batched steps of every environment; finished episodes go to the buffer (unless a killed
    run already stored them). New episodes take this process's next seed (every `world`-th)."""
    ocfg = cfg.online
    epsilon = ocfg.explore.epsilon(state.epoch - ocfg.offline_epochs)
    names = {"agent": policy.name, "min_format": policy.name, "random": "random"}
    names["oracle"] = f"oracle@{oracle_cfg.corrupt_rate:g}"
    played = Played()
    for _ in range(ocfg.steps_per_env):
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
