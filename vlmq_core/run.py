"""One run, one config: :class:`RunConfig`, and the runs composed from it: build its dataset
(:func:`collect_data`), train offline (:func:`train`), train offline-to-online (:func:`online`), evaluate.

The command line (``vlmq collect / train / online / eval``) and the notebooks call these same functions with the
same config, so a notebook's run and ``vlmq train --config <file>`` are one run. Here the pieces are put
together: the model, the dataset, the :class:`~vlmq_core.trainer.Trainer`, the online loop
(:mod:`vlmq_core.online`) and the run directory (:class:`~vlmq_core.rundir.RunDir`, which writes every file).
Whatever can be checked without a model (the folders, the config, a run to continue from, the model's name) is
checked first, before anything is loaded or created; running the same config again resumes the run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vlmq_core import config, distributed, hardware
from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, DataConfig, EvalConfig, build_dataset, evaluate
from vlmq_core.config import ConfigError
from vlmq_core.critic import CriticConfig
from vlmq_core.losses import LossConfig
from vlmq_core.model import LoRAConfig, ModelConfig, Policy, PolicyConfig, check_model_name, load_policy
from vlmq_core.online import OnlineConfig, OnlineResult, OnlineState, online_loop
from vlmq_core.rundir import RunDir, check_writable_folder, find_checkpoint
from vlmq_core.trainer import TrainConfig, Trainer

RESUMABLE_CHANGES = (
    "run_dir",
    "data.path",
    "model.device",
    "train.steps",
    "train.checkpoint_every",
    "train.report_to",
    "eval.",
    "online.epochs",
    "online.eval_every",
)
"""Keys whose values may change when a run directory is continued (anything else is another run)."""


@dataclass
class RunConfig:
    """Everything one run is: the model and its heads, the loss, the optimisation, the data and the evaluation."""

    run_dir: str = "runs/run"
    """Folder of the run: config.yaml, checkpoint/, metrics.jsonl, eval.json. A run found there is resumed."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Which model to load and how."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters on the text decoder."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The critic head as built."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The actor loss, the critic's targets and the filter."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, target critic, PopArt and whitening rates."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    """How episodes are played (task, parallel envs, sampling), for the dataset and the evaluation."""
    data: DataConfig = field(default_factory=DataConfig)
    """The dataset: its folder and its sources."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation after training (and every ``online.eval_every`` epochs of an online run)."""
    online: OnlineConfig = field(default_factory=OnlineConfig)
    """The offline-to-online loop of ``vlmq online`` (unused by ``vlmq train``)."""

    def __post_init__(self) -> None:
        config.check_fields(self)


PRESETS: dict[str, dict[str, Any]] = {
    "gym-cards-paper": {"online": {"offline_epochs": 50}},
    "babyai-paper": {
        "online": {
            "epochs": 600,
            "steps_per_env": 150,
            "buffer_turns": 100_000,
            "min_buffer_turns": 5_000,
            "use_dataset": False,
            "explore": {"epsilon_start": 1.0, "epsilon_end": 0.1, "decay_epochs": 300},
        },
        "train": {"lr_critic": 8e-4, "warmup_lora": 500, "warmup_critic": 50},
        "loss": {"critic_weight": 8.0},
    },
}
"""Named starting points for a config file's ``preset:`` key (the file's own keys, then overrides, win): what
the paper's schedule per GPU (it ran 2 GPUs; METHOD.md Tables 2-3) changes from the defaults, which are its Gym
Cards column. The CPU-sized config files in ``configs/`` name one of these and shrink it."""


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


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (None: the defaults) and dotted overrides (``["train.steps=400"]``).
    A file may start from a named preset (``preset: gym-cards-paper``; :data:`PRESETS`): its
    own keys, then the overrides, replace the preset's."""
    return config.load(RunConfig, path, overrides, prepare=merge_preset)


# ---- the dataset ---------------------------------------------------------------------------------------


DATASET_CONFIG = ".config.yaml"
"""The config that built a dataset, in its folder; hidden, so the folder reads as plain Parquet
(``pandas.read_parquet(folder)``, ``datasets.load_dataset("parquet", data_dir=folder)``)."""


def check_dataset(cfg: RunConfig, must_exist: bool = False) -> None:
    """Refuse, in one sentence, a ``data.path`` that is a file, or (with `must_exist`, for a run that only reads it)
    holds no dataset yet, or (without, for collection) cannot be made or written. Creates nothing."""
    path = Path(cfg.data.path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"data.path {path} is a file, not a folder: give the dataset's folder.")
    if not must_exist:
        check_writable_folder(path, "data.path")
    elif not any(path.glob("shard-*.parquet")):
        raise ConfigError(
            f"The dataset {path} is empty or missing: build it with `vlmq collect --config <this config>` "
            "(or point data.path at an existing dataset)."
        )


def open_dataset(cfg: RunConfig, must_exist: bool = False) -> TurnBuffer:
    """The run's dataset folder as a :class:`TurnBuffer`, after :func:`check_dataset`."""
    check_dataset(cfg, must_exist)
    path = Path(cfg.data.path)
    if (path / "config.yaml").is_file() and not (path / DATASET_CONFIG).exists():  # written so before 2026-12
        with contextlib.suppress(OSError):  # a read-only dataset keeps the old name; reading it still works
            os.replace(path / "config.yaml", path / DATASET_CONFIG)
    return TurnBuffer(path, max_turns=cfg.data.max_turns)


def collect_data(cfg: RunConfig, policy: Policy | None = None, progress: bool = True) -> TurnBuffer:
    """Build or top up the run's dataset (``cfg.data``); resumable. The model (``cfg.model``) is loaded only when
    a source needs it and `policy` is not given. Writes the config next to the shards (:data:`DATASET_CONFIG`) when
    it added turns or there was none: a dataset already complete is left as it is."""
    check_dataset(cfg)
    loads = policy is None and any(s.needs_model for s in cfg.data.sources)
    if loads:
        check_model_name(cfg.model)
    buffer = open_dataset(cfg)
    before = buffer.version
    if loads:
        policy = load_policy(PolicyConfig(model=cfg.model, lora=cfg.lora))
    build_dataset(policy, cfg.collect, cfg.data, buffer, progress=progress)
    saved = Path(cfg.data.path) / DATASET_CONFIG
    if buffer.version != before or not saved.is_file():
        config.save(cfg, saved)
    return buffer


# ---- training --------------------------------------------------------------------------------------------


def policy_config(cfg: RunConfig, buffer: TurnBuffer | None = None) -> PolicyConfig:
    """The run's :class:`PolicyConfig`, with ``critic.init_q: min_return_to_go`` resolved from the dataset."""
    critic = cfg.critic
    if critic.init_q == "min_return_to_go":
        if buffer is None:
            raise ConfigError("critic.init_q=min_return_to_go needs the run's dataset to compute it.")
        critic = replace(critic, init_q=buffer.min_return_to_go())
    return PolicyConfig(model=cfg.model, lora=cfg.lora, critic=critic)


def check_resumable(cfg: RunConfig) -> None:
    """A run directory that already holds a config continues only with the same run (RESUMABLE_CHANGES aside)."""
    saved_path = RunDir(cfg.run_dir).config_path
    if not saved_path.is_file():
        return
    saved = load_config(saved_path)
    changed = {k: v for k, v in config.differences(saved, cfg).items() if not k.startswith(RESUMABLE_CHANGES)}
    if changed:
        key, (there, now) = next(iter(changed.items()))
        raise ConfigError(
            f"{cfg.run_dir} holds a run with another config ({key}: {there!r} there, {now!r} now); continue it "
            "with its own config or give this run a new run_dir."
        )


def init_checkpoint(cfg: RunConfig) -> Path | None:
    """The checkpoint folder ``online.init_from`` names (a run directory's newest checkpoint, or a checkpoint
    folder itself); None without ``init_from``. ConfigError when it holds none."""
    if not cfg.online.init_from:
        return None
    source = Path(cfg.online.init_from)
    folder = find_checkpoint(source) or (source if (source / "policy.json").is_file() else None)
    if folder is None:
        there = "does not exist" if not source.exists() else "holds no checkpoint"
        raise ConfigError(
            f"online.init_from: {source} {there}: train that run first (`vlmq train --config <its config>`) or "
            "point online.init_from at a run directory that has a checkpoint/."
        )
    return folder


def preflight(cfg: RunConfig, kind: str) -> RunDir:
    """Everything a run of `kind` (``train`` or ``online``) can check without loading the model, in one sentence
    each, before anything is created: the run directory, the run it would continue, the dataset, the run it
    starts from and the model's name. Returns the run's :class:`RunDir`."""
    run = RunDir(cfg.run_dir)
    run.check()
    check_resumable(cfg)
    uses_data = kind == "train" or cfg.online.use_dataset
    if uses_data:
        check_dataset(cfg, must_exist=True)
    if kind == "online":
        if not uses_data and cfg.critic.init_q == "min_return_to_go":
            raise ConfigError(
                "critic.init_q=min_return_to_go is computed from the dataset, and online.use_dataset is false: give "
                "critic.init_q a number (e.g. the task's lowest return) or null."
            )
        if run.find_checkpoint("online.pt") is None:
            init_checkpoint(cfg)
    check_model_name(cfg.model)
    return run


@dataclass
class TrainResult:
    """What :func:`train` leaves: the trained policy, its per-update metrics and its evaluation (if any)."""

    policy: Policy
    history: list[dict[str, float]]
    eval: dict[str, Any] | None


def train(
    cfg: RunConfig,
    progress: bool = True,
    callback: Callable[[Trainer], dict[str, float] | None] | None = None,
    callback_every: int = 0,
) -> TrainResult:
    """Train (or resume) the run of `cfg` on its dataset, then evaluate it (``cfg.eval``) into ``eval.json``.

    The policy is built after seeding torch with ``train.seed``, so its LoRA and critic initialisation depend on
    the config alone: the same config gives the same run from a notebook or from ``vlmq train``."""
    distributed.setup()
    run = preflight(cfg, "train")
    buffer = open_dataset(cfg, must_exist=True)
    torch.manual_seed(cfg.train.seed)
    policy = load_policy(policy_config(cfg, buffer))
    trainer = Trainer(policy, buffer, cfg.train, cfg.loss, callback, callback_every)
    if run.resume(trainer) and distributed.is_main():
        print(f"Resumed {run.path} at update {trainer.step}/{cfg.train.steps}.")
    run.save_config(cfg)
    run.open_reporter(cfg.train.report_to, config.to_dict(cfg), start=trainer.step)
    try:
        history = trainer.fit(progress, run)
    finally:
        run.close()
    result = evaluate_run(cfg, policy, trainer.step, progress) if cfg.eval.episodes else None
    return TrainResult(policy, history, result)


def evaluate_run(cfg: RunConfig, policy: Policy, step: int, progress: bool = True) -> dict[str, Any]:
    """Evaluate a run's policy (``cfg.collect``, ``cfg.eval``) into ``run_dir/eval.json``; an evaluation already
    there for the same update and settings is reused."""
    run = RunDir(cfg.run_dir)
    settings = {"step": step, "task": cfg.collect.task, "eval": config.to_dict(cfg.eval)}
    saved = run.read_json(RunDir.EVAL)
    if saved is not None and {k: saved.get(k) for k in settings} == settings:
        return saved
    record = settings | {"hardware": hardware.describe(), **evaluate(policy, cfg.collect, cfg.eval, progress=progress)}
    run.write_json(RunDir.EVAL, record)
    return record


def buffer_dir(run_dir: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The buffer folder of one process: ``run_dir/buffer`` alone, ``run_dir/buffer-<rank>`` with several."""
    return Path(run_dir) / ("buffer" if world_size == 1 else f"buffer-{rank}")


def online(cfg: RunConfig, progress: bool = True) -> OnlineResult:
    """Run (or resume) the offline-to-online run of `cfg` to ``online.epochs`` epochs (:mod:`vlmq_core.online`).

    Composes the loop's parts: this process's FIFO buffer (:func:`buffer_dir`; the dataset's turns first when
    ``online.use_dataset``), the policy (seeded by ``train.seed``, so every process starts from the same weights;
    from ``online.init_from`` when given), its trainer, and the run directory, from which a killed run resumes
    exactly (weights, optimizer, RNG states, episodes in flight). With several processes (``accelerate launch``)
    the run is continued by as many as started it."""
    distributed.setup()
    rank, world = distributed.rank(), distributed.world_size()
    ocfg = cfg.online
    run = preflight(cfg, "online")
    checkpoint = run.find_checkpoint("online.pt")
    saved = torch.load(checkpoint / "online.pt", map_location="cpu", weights_only=False) if checkpoint else None
    if saved is not None and saved["world_size"] != world:
        raise ConfigError(
            f"{run.path} was run by {saved['world_size']} processes and is continued by {world}: resume it with "
            f"--num_processes {saved['world_size']} (each process holds its own episodes in flight)."
        )
    start = init_checkpoint(cfg) if checkpoint is None else None
    buffer = TurnBuffer(buffer_dir(run.path, rank, world), max_turns=ocfg.buffer_turns)
    dataset = open_dataset(cfg, must_exist=True) if ocfg.use_dataset else None
    if dataset is not None and checkpoint is None and len(buffer) == 0:
        buffer.add(dataset.turns)  # one shard: a kill leaves all of it or none
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every process
    policy = load_policy(policy_config(cfg, dataset))
    trainer = Trainer(policy, buffer, cfg.train, cfg.loss)
    state = OnlineState(next_seed=ocfg.seed + rank)
    history: list[dict[str, Any]] = []
    if start is not None:
        policy.load(start)
        if (start / "trainer.pt").is_file():
            trainer.continue_from(torch.load(start / "trainer.pt", map_location="cpu", weights_only=False))
    if saved is not None:
        policy.load(checkpoint)
        trainer.load_state_dict(torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=False))
        mine = saved["ranks"][rank]
        state = OnlineState(**mine["online"])
        trainer.rng.bit_generator.state = mine["numpy_rng"]
        torch.set_rng_state(mine["torch_rng"])
        history = run.history(up_to=state.epoch, key="epoch")
        if distributed.is_main():
            print(f"Resumed {run.path} after epoch {state.epoch}/{ocfg.epochs} (update {trainer.step}).")
    distributed.barrier()  # every process has read the checkpoint and the history before rank 0 writes
    run.restart_metrics(history)
    run.save_config(cfg)
    run.open_reporter(cfg.train.report_to, config.to_dict(cfg), start=state.epoch)
    try:
        return online_loop(policy, trainer, buffer, ocfg, cfg.collect, cfg.eval, run, state, history, progress)
    finally:
        run.close()
