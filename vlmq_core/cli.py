"""The ``vlmq`` command line: ``collect``, ``train``, ``online`` and ``eval`` over one run config.

    vlmq collect --config configs/numberline_afsft.yaml                 # build or top up the dataset
    vlmq train   --config configs/numberline_afsft.yaml train.steps=400  # train (resumes a killed run)
    vlmq online  --config configs/numberline_online.yaml                # offline, then online (resumes too)
    vlmq online  --resume runs/numberline/online                        # continue a run with its own config
    vlmq eval runs/numberline/afsft --episodes 100 --seed 20000          # score a checkpoint (or `base`)
    vlmq batch notebooks/03_offline_afsft.ipynb -o train.seed 0,1 -o loss.actor sft,afsft  # a papermill grid

Also ``python -m vlmq_core.cli``, so ``accelerate launch -m vlmq_core.cli train ...`` works. Overrides are dotted
``key=value`` pairs (values read as YAML); ``vlmq train --help`` lists every key with its help. A bad value or an
unknown key exits with status 2 and one sentence, before any model is loaded. Ctrl-C stops a command with one
line: where the run stopped and the command that continues it (status 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import textwrap
from pathlib import Path

import torch

from vlmq_core import config, distributed, hardware, sweeps
from vlmq_core.buffer import BufferError
from vlmq_core.collect import EvalConfig, ResumeError, evaluate
from vlmq_core.config import ConfigError
from vlmq_core.model import ModelLoadError, PolicyConfig, check_model_name, load_checkpoint, load_policy
from vlmq_core.run import RunConfig, collect_data, load_config, online, train
from vlmq_core.rundir import RunDir, checkpoint_step, find_checkpoint, write_json

EPILOG_WIDTH = 118


def _options_text() -> str:
    lines = ["config keys (override any as key=value; the config file sets them first):"]
    for key, tp, default, doc in config.options(RunConfig):
        items = isinstance(default, list) and default and dataclasses.is_dataclass(default[0])
        shown = f" = {len(default)} items" if items else f" = {default!r}"
        lines.append(f"  {key} ({tp}){shown}")
        if doc:
            first_paragraph = doc.split("\n\n")[0].replace("\n", " ")
            lines += textwrap.wrap(first_paragraph, EPILOG_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2 (argparse's own usage dump is noise here)
        self.exit(2, f"vlmq: error: {message} (see `{self.prog} --help`)\n")


def _config_parser(sub, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=_options_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML run config (configs/ has the shipped ones); omitted: every default")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=400")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vlmq", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _config_parser(
        sub,
        "collect",
        "build or top up a dataset",
        "Build or top up the dataset of a run config (data.path, data.sources; the model for agent/min_format "
        "sources). Resumable: seeds already on disk are skipped, a killed run keeps every finished episode.",
    )
    _config_parser(
        sub,
        "train",
        "train offline (SFT / AFSFT / max-Q) from a dataset",
        "Train the run of a config on its dataset (loss.actor: sft, afsft or maxq), checkpointing to run_dir; "
        "the same command resumes a killed run. Evaluates at the end when eval.episodes > 0 (run_dir/eval.json).",
    )
    on = _config_parser(
        sub,
        "online",
        "train offline-to-online: collect with the current policy, update, evaluate, repeat",
        "Run the offline-to-online loop of a config (online.*: epochs of collection with exploration prompting, "
        "updates and evaluation; the dataset first when online.use_dataset). Checkpoints every epoch; the same "
        "command, or --resume RUN_DIR, continues a killed run exactly. A config file may start from a preset "
        "(`preset: gym-cards-paper` or `babyai-paper`).",
    )
    on.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its own config.yaml")
    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or the base model",
        description="Evaluate a trained run (its run_dir or checkpoint folder) or `base` (the config's model, "
        "untrained) with the agent strategy; prints the metrics and writes them as JSON.",
        epilog=_options_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument(
        "checkpoint", help="a run directory, a checkpoint folder (an online run's checkpoint-offline too), or `base`"
    )
    ev.add_argument("--task", help="task to play (default: the run's collect.task)")
    ev.add_argument("--episodes", type=int, default=100, help="episodes (default 100)")
    ev.add_argument("--seed", type=int, default=20_000, help="first seed (default 20000, used by no dataset)")
    ev.add_argument("--config", help="run config for `base` (model, collect settings); default: the run's own")
    ev.add_argument("--device", help="override model.device (e.g. cpu to score a GPU run on a laptop)")
    ev.add_argument("--out", help="JSON file to write (default: <run_dir>/eval-<task>-s<seed>-n<episodes>.json)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the config")
    ba = sub.add_parser(
        "batch",
        help="run notebooks over a grid of parameters (papermill), then a summary table",
        description=sweeps.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ba.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="notebooks to run (.ipynb)")
    ba.add_argument(
        "-p", dest="params", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
        help="a notebook parameter and its comma-separated values (YAML), e.g. -p sections [numberline],[babyai]",
    )  # fmt: skip
    ba.add_argument(
        "-o", dest="grid_overrides", nargs=2, action="append", default=[], metavar=("KEY", "VALUES"),
        help="a run-config key and its values, appended as KEY=V to the notebook's overrides, e.g. -o train.seed 0,1",
    )  # fmt: skip
    ba.add_argument("--name", help="the batch's folder name (default: notebook numbers and grid names)")
    ba.add_argument("--out", default="nbs_outputs/batch", help="where batches go (default nbs_outputs/batch)")
    ba.add_argument("--jobs", type=int, help="cells at a time (default: one per 2 cores, as free memory allows)")
    ba.add_argument("--mem-per-job", type=float, default=4.0, help="GB a cell needs, for the default --jobs (4)")
    ba.add_argument(
        "--metrics", default=",".join(sweeps.DEFAULT_METRICS),
        help="comma-separated patterns of the metrics files' dotted keys to summarize (default: %(default)s)",
    )  # fmt: skip
    ba.add_argument("--kernel", default="python3", help="Jupyter kernel (default python3)")
    ba.add_argument("--list", action="store_true", help="list the cells and their states; run nothing")
    ba.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _collect(args) -> int:
    cfg = load_config(args.config, args.overrides)
    args.data_path = cfg.data.path
    buffer = collect_data(cfg, progress=not args.quiet)
    print(json.dumps(buffer.stats(), indent=1))
    return 0


def _train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    args.run_dir = cfg.run_dir
    result = train(cfg, progress=not args.quiet)
    if not distributed.is_main():
        return 0
    last = result.history[-1] if result.history else {}
    shown = {k: last[k] for k in ("step", "train/loss", "actor/kept_frac") if k in last}
    print(f"{cfg.run_dir}: {len(result.history)} updates; last: {json.dumps(shown)}")
    if result.eval is not None:
        print(json.dumps(result.eval, indent=1))
    return 0


def _online(args) -> int:
    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there, so no run to continue.")
        if args.config:
            raise ConfigError("Give --resume RUN_DIR or --config FILE, not both (the run keeps its own config).")
        cfg = load_config(saved, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    args.run_dir = cfg.run_dir
    result = online(cfg, progress=not args.quiet)
    if not distributed.is_main():  # one report per run, not per process
        return 0
    last = result.history[-1] if result.history else {}
    keys = ("epoch", "online/updates", "online/env_steps", "online/success", "buffer/turns")
    print(f"{cfg.run_dir}: {json.dumps({k: last[k] for k in keys if k in last})}")
    if result.eval is not None:
        print(json.dumps(result.eval, indent=1))
    return 0


def _eval(args) -> int:
    base = args.checkpoint == "base"
    folder = None if base else Path(args.checkpoint)
    if folder is not None and not folder.exists():
        raise ConfigError(f"{folder} does not exist: give a run directory, a checkpoint folder, or `base`.")
    run_dir = None if folder is None else (folder.parent if folder.name.startswith("checkpoint") else folder)
    saved = run_dir / "config.yaml" if run_dir is not None else None
    cfg_file = args.config or (str(saved) if saved is not None and saved.is_file() else None)
    overrides = list(args.overrides) + ([f"collect.task={args.task}"] if args.task else [])
    overrides += [f"model.device={args.device}"] if args.device else []
    cfg = load_config(cfg_file, overrides)
    if base:
        check_model_name(cfg.model)
        policy = load_policy(PolicyConfig(model=cfg.model, lora=cfg.lora))
    else:
        policy = load_checkpoint(folder, device=args.device)
    metrics = evaluate(policy, cfg.collect, EvalConfig(args.episodes, args.seed), progress=not args.quiet)
    name = f"eval-{cfg.collect.task}-s{args.seed}-n{args.episodes}.json"
    out = Path(args.out) if args.out else (Path("runs/eval") / f"base-{name}" if base else run_dir / name)
    record = {"checkpoint": args.checkpoint, "model": policy.name, "task": cfg.collect.task, "seed": args.seed}
    write_json(out, record | {"hardware": hardware.describe(), **metrics})
    se = metrics["eval/success_se"]
    print(
        f"{args.checkpoint}: success {metrics['eval/success']:.1%} (SE {se:.1%}), valid {metrics['eval/valid']:.1%}, "
        f"return {metrics['eval/return']:.2f} over {int(metrics['eval/episodes'])} episodes -> {out}"
    )
    return 0


def _batch(args) -> int:
    grid = sweeps.build_grid(args.notebooks, args.params, args.grid_overrides, args.out, args.name)
    if args.list:
        for cell in grid.cells:
            print(f"{cell.state():<8} {cell.label}  {json.dumps(cell.coords)}")
        return 0
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    result = sweeps.run_batch(
        grid, args.jobs, args.mem_per_job, args.kernel, metrics, progress=not args.quiet, cwd=Path.cwd()
    )
    print(result.summary.read_text())
    print(
        f"batch {grid.name}: {len(result.ran)} ran, {len(result.skipped)} already done, {len(result.failed)} failed; "
        f"summary: {result.summary} (and .json, .html)"
    )
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlmq`` console script; returns the exit status (2 for a bad config or argument)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come before or after options
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or args.command == "batch"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    try:
        commands = {"collect": _collect, "train": _train, "online": _online, "eval": _eval, "batch": _batch}
        return commands[args.command](args)
    except (ConfigError, ModelLoadError) as e:  # a bad config, override, argument or model name
        print(f"vlmq {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (BufferError, ResumeError) as e:  # a dataset or a run on disk that cannot be used
        print(f"vlmq {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nvlmq {args.command}: {_interrupted(args, argv)}", file=sys.stderr)
        return 130


def _interrupted(args, argv: list[str] | None) -> str:
    """One line for Ctrl-C: where the run stopped and the command that continues it."""
    again = "vlmq " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.command == "collect" and getattr(args, "data_path", None):
        return f"stopped; every finished episode is in {args.data_path}: `{again}` collects the rest."
    run_dir = getattr(args, "run_dir", None)
    if args.command not in ("train", "online") or run_dir is None:
        return "stopped."
    folder = find_checkpoint(run_dir, "online.pt" if args.command == "online" else "trainer.pt")
    if folder is None:
        return f"stopped before {run_dir} had a checkpoint: `{again}` starts it again."
    if args.command == "online":
        epoch = torch.load(folder / "online.pt", map_location="cpu", weights_only=False)["ranks"][0]["online"]["epoch"]
        where, again = f"after epoch {epoch}", f"vlmq online --resume {shlex.quote(str(run_dir))}"
    else:
        where = f"at update {checkpoint_step(folder)}"
    return f"stopped; {RunDir(run_dir).path} holds its checkpoint {where}: `{again}` continues from there."


if __name__ == "__main__":
    sys.exit(main())
