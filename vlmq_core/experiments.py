"""The notebooks' experiments: the runs a notebook compares, built and scored the same way every time.

Not part of a run (that is :mod:`vlmq_core.run`): this is how notebooks 03-06 put runs side by side, a task's
config files (:func:`task_config_files`), one set of overrides for every run of a notebook
(:func:`notebook_configs`), held-out evaluations during training (:func:`eval_callback`), an online run's
checkpoints scored on the same episodes (:func:`score_run`) and a whole task of notebook 04
(:func:`online_experiment`). :func:`setup_notebook` is the start-up every notebook shares.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from vlmq_core import config, distributed, hardware
from vlmq_core.collect import EvalConfig, SourceConfig, collect, evaluate, source_name, summarize
from vlmq_core.config import ConfigError
from vlmq_core.model import PolicyConfig, load_checkpoint, load_policy
from vlmq_core.online import OFFLINE_CHECKPOINT
from vlmq_core.render import setup_figures
from vlmq_core.run import RunConfig, collect_data, load_config, online, train
from vlmq_core.rundir import checkpoint_step, find_checkpoint, write_json
from vlmq_core.trainer import Trainer


def setup_notebook() -> str:
    """The start of every notebook: paths relative to the repository root (a notebook opened in ``notebooks/``
    moves there), every figure saved with a picture that shows without JavaScript
    (:func:`vlmq_core.render.setup_figures`), the libraries' own progress widgets off (they would stay in the saved
    notebook at 0%; vlmq's bars end as one line of text, :mod:`vlmq_core.progress`), and the hardware described
    (printed, and returned for the metrics file)."""
    if Path.cwd().name == "notebooks" and (Path.cwd().parent / "vlmq_core").is_dir():
        os.chdir("..")
    setup_figures()
    import huggingface_hub
    import transformers

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    described = hardware.describe()
    print(described)
    return described


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


def metrics_file(notebook: str, task: str, config_files: Mapping[str, str] | None = None) -> str:
    """A notebook's default metrics path: ``nbs_outputs/<notebook>.metrics.json`` for NumberLine, with
    ``_<task>`` (lower case) for another task, or, when the runs come from `config_files`, with the AFSFT config's
    name (``configs/numberline_pixels_afsft.yaml``: ``_numberline_pixels``), so no run overwrites another's."""
    suffix = "" if task == "NumberLine" else f"_{task.lower()}"
    if config_files:
        suffix = "_" + Path(config_files["afsft"]).stem.removesuffix("_afsft")
    return f"nbs_outputs/{notebook}{suffix}.metrics.json"


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


def eval_callback(cfg: RunConfig, episodes: int, seed: int) -> Callable[[Trainer], dict[str, float]]:
    """A ``train(callback=...)`` that plays `episodes` held-out episodes (seeds ``seed..``; keep them apart from
    ``eval.seed``'s) with the current policy and adds their ``eval/`` metrics to that update's row of
    ``metrics.jsonl``: success and valid syntax during training (notebook 05's curves)."""

    def callback(trainer: Trainer) -> dict[str, float]:
        return evaluate(trainer.policy, cfg.collect, EvalConfig(episodes, seed), progress=False)

    return callback


def exploration_sources(cfg: RunConfig, episodes: int, seed: int) -> list[SourceConfig]:
    """The run's exploration strategies that play without the model (``random``, ``oracle`` at the run's
    corruption rate), as sources on the held-out seeds: what the agent's own play has to beat."""

    explore = cfg.online.explore
    return [
        SourceConfig(name, episodes, seed, corrupt_rate=explore.corrupt_rate if name == "oracle" else 0.0)
        for name in ("random", "oracle")
        if explore.weights[name] > 0
    ]


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

    t0 = time.perf_counter()
    data = collect_data(cfg, progress=progress).stats() if cfg.online.use_dataset else None
    if offline is not None:
        if offline.data.path != cfg.data.path:
            raise ConfigError(f"The offline run trains on {offline.data.path} and the online run on {cfg.data.path}.")
        train(offline, progress=progress)
        cfg = config.apply_overrides(cfg, {"online.init_from": offline.run_dir})
    result = online(cfg, progress=progress)
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
