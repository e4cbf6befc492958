"""One run, one config: :class:`RunConfig`, and what a run does with it (build its dataset, train, evaluate).

The command line (``vlmq collect / train / eval``) and the notebooks call these same functions with the same
config, so a notebook's run and ``vlmq train --config <file>`` are one run. A run directory holds the exact
config it ran with (``config.yaml``), its checkpoint, ``metrics.jsonl`` and ``eval.json``; running the same
config again resumes it.
"""

from __future__ import annotations

import json
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
from vlmq_core.model import LoRAConfig, ModelConfig, Policy, PolicyConfig, load_policy
from vlmq_core.online import OnlineConfig, merge_preset
from vlmq_core.report import Reporter
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


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (None: the defaults) and dotted overrides (``["train.steps=400"]``).
    A file may start from a named preset (``preset: gym-cards-paper``; :data:`vlmq_core.online.PRESETS`): its
    own keys, then the overrides, replace the preset's."""
    return config.load(RunConfig, path, overrides, prepare=merge_preset)


def task_config_files(task: str, root: str | os.PathLike = "configs") -> dict[str, str]:
    """Notebook 03's runs for a task: ``{"sft": <root>/<task>_sft.yaml, "afsft": <root>/<task>_afsft.yaml}``
    (the task's short name, lower case). ConfigError names the tasks that have both files."""
    files = {name: f"{root}/{task.lower()}_{name}.yaml" for name in ("sft", "afsft")}
    if all(Path(f).is_file() for f in files.values()):
        return files
    have = sorted(
        p.name.removesuffix("_afsft.yaml")
        for p in Path(root).glob("*_afsft.yaml")
        if (p.parent / p.name.replace("_afsft", "_sft")).is_file()
    )
    raise ConfigError(
        f"No offline configs for task {task!r}: {files['sft']} and {files['afsft']} are needed; tasks with both: "
        f"{', '.join(have) or 'none'} (or pass config_files explicitly)."
    )


def notebook_configs(
    files: Mapping[str, str], overrides: Iterable[str] | Mapping[str, Any] = (), out_dir: str | None = None
) -> dict[str, RunConfig]:
    """The configs of a notebook's runs, built the one way every notebook does: each file with the same
    overrides; with `out_dir`, run ``name`` writes to ``<out_dir>/<name>`` and the shared dataset to
    ``<out_dir>/data``. The runs of one notebook are compared, so they must share the dataset, the way episodes
    are played and the evaluation (``data``, ``collect``, ``eval``): ConfigError names the first difference."""
    overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
    cfgs = {}
    for name, path in files.items():
        cfg = load_config(path, overrides)
        if out_dir:
            cfg = config.apply_overrides(cfg, {"run_dir": f"{out_dir}/{name}", "data.path": f"{out_dir}/data"})
        cfgs[name] = cfg
    first_name, first = next(iter(cfgs.items()))
    for name, cfg in cfgs.items():
        for section in ("data", "collect", "eval"):
            diff = config.differences(getattr(first, section), getattr(cfg, section))
            if diff:
                raise ConfigError(
                    f"Runs {first_name!r} and {name!r} must share {section} to be compared, but differ in "
                    f"{section}.{next(iter(diff))}; set it in both config files or in the common overrides."
                )
    return cfgs


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented strict JSON (NaN as null: ``config.json_text``) atomically (temp file + rename)."""
    return config.write_text_atomic(path, config.json_text(obj, indent=2))


# ---- the dataset ---------------------------------------------------------------------------------------


def open_dataset(cfg: RunConfig, must_exist: bool = False) -> TurnBuffer:
    """The run's dataset folder as a :class:`TurnBuffer`; with `must_exist`, an empty one is an error that says
    how to build it."""
    path = Path(cfg.data.path)
    if must_exist and not any(path.glob("shard-*.parquet")):
        raise ConfigError(
            f"The dataset {path} is empty or missing: build it with `vlmq collect --config <this config>` "
            "(or point data.path at an existing dataset)."
        )
    return TurnBuffer(path, max_turns=cfg.data.max_turns)


def collect_data(cfg: RunConfig, policy: Policy | None = None, progress: bool = True) -> TurnBuffer:
    """Build or top up the run's dataset (``cfg.data``); resumable. The model (``cfg.model``) is loaded only when
    a source needs it and `policy` is not given. Writes ``config.yaml`` next to the shards."""
    buffer = open_dataset(cfg)
    if policy is None and any(s.needs_model for s in cfg.data.sources):
        policy = load_policy(PolicyConfig(model=cfg.model, lora=cfg.lora))
    build_dataset(policy, cfg.collect, cfg.data, buffer, progress=progress)
    config.save(cfg, Path(cfg.data.path) / "config.yaml")
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
    saved_path = Path(cfg.run_dir) / "config.yaml"
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
    check_resumable(cfg)
    buffer = open_dataset(cfg, must_exist=True)
    torch.manual_seed(cfg.train.seed)
    policy = load_policy(policy_config(cfg, buffer))
    run_dir = Path(cfg.run_dir)
    trainer = Trainer(policy, buffer, cfg.train, cfg.loss, run_dir, callback, callback_every)
    if distributed.is_main():
        config.save(cfg, run_dir / "config.yaml")
        trainer.reporter = Reporter(run_dir, cfg.train.report_to, config.to_dict(cfg), start=trainer.step)
    try:
        history = trainer.fit(progress)
    finally:
        if trainer.reporter is not None:
            trainer.reporter.close()
    result = evaluate_run(cfg, policy, trainer.step, progress) if cfg.eval.episodes else None
    return TrainResult(policy, history, result)


def eval_callback(cfg: RunConfig, episodes: int, seed: int) -> Callable[[Trainer], dict[str, float]]:
    """A ``train(callback=...)`` that plays `episodes` held-out episodes (seeds ``seed..``; keep them apart from
    ``eval.seed``'s) with the current policy and adds their ``eval/`` metrics to that update's row of
    ``metrics.jsonl``: success and valid syntax during training (notebook 05's curves)."""

    def callback(trainer: Trainer) -> dict[str, float]:
        return evaluate(trainer.policy, cfg.collect, EvalConfig(episodes, seed), progress=False)

    return callback


def evaluate_run(cfg: RunConfig, policy: Policy, step: int, progress: bool = True) -> dict[str, Any]:
    """Evaluate a run's policy (``cfg.collect``, ``cfg.eval``) into ``run_dir/eval.json``; an evaluation already
    there for the same update and settings is reused."""
    path = Path(cfg.run_dir) / "eval.json"
    settings = {"step": step, "task": cfg.collect.task, "eval": config.to_dict(cfg.eval)}
    if path.is_file():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in settings} == settings:
            return saved
    record = settings | {"hardware": hardware.describe(), **evaluate(policy, cfg.collect, cfg.eval, progress=progress)}
    if distributed.is_main():
        write_json(path, record)
    return record
