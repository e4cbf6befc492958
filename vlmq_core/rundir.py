"""The run directory and its one writer, :class:`RunDir`: every file of a run goes through it.

A run directory holds ``config.yaml`` (the exact config), ``metrics.jsonl`` (one row per update, or per epoch of an
online run), ``checkpoint/`` (the policy's weights with ``adapter/``, and the training state), ``eval.json`` and
the reporters' folders (``tensorboard/``, W&B). Both loops (:meth:`vlmq_core.trainer.Trainer.fit` and
:func:`vlmq_core.online.online_loop`) write only through it; the trainer holds no path.

Writes are atomic (a temp file or folder, then a rename), so a kill leaves the old version or the new one. With
several processes only the main one writes (``main``); every process may read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlmq_core import config, distributed
from vlmq_core.config import ConfigError
from vlmq_core.report import Reporter

if TYPE_CHECKING:
    from vlmq_core.model import Policy


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """Refuse, in one sentence, a folder that cannot be made or written (a file in its place, a read-only or
    virtual parent such as /proc), before anything is loaded or created. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder: give a folder path.")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path} cannot be made: {probe} is a file.")
    if not os.access(probe, os.W_OK | os.X_OK) or str(probe.resolve()).startswith(("/proc", "/sys")):
        raise ConfigError(f"{what} {path} cannot be written ({probe} is not writable): choose another folder.")


class RunDir:
    """The folder of one run, and everything written there."""

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint"
    EVAL = "eval.json"

    def __init__(self, path: str | os.PathLike, main: bool | None = None):
        self.path = Path(path)
        self.main = distributed.is_main() if main is None else main
        """Whether this process writes (the main one of several; the only one of one)."""
        self.reporter: Reporter | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- the config -------------------------------------------------------------------------------
    def check(self) -> None:
        """:func:`check_writable_folder` of the run directory (before a model is loaded)."""
        check_writable_folder(self.path, "run_dir")

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    def save_config(self, cfg: Any) -> None:
        if self.main:
            config.save(cfg, self.config_path)

    # ---- metrics -----------------------------------------------------------------------------------
    def history(self, up_to: int | None = None, key: str = "step") -> list[dict[str, float]]:
        """``metrics.jsonl``'s rows (a torn last line ignored) whose `key` (``step``: the update, ``epoch`` in online
        runs) is ``<= up_to`` if given. A ``null`` (a metric undefined in its row) reads as NaN."""
        return load_history(self.path, up_to, key)

    def restart_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` with exactly `rows` (a resumed run drops the rows written after its checkpoint)."""
        if self.main:
            config.write_text_atomic(self.path / self.METRICS, "".join(config.json_text(r) + "\n" for r in rows))

    def open_reporter(self, report_to: list[str], cfg: Mapping[str, Any], start: int) -> None:
        """The TensorBoard / W&B views of the metrics (``train.report_to``), from step `start` on."""
        if self.main:
            self.reporter = Reporter(self.path, report_to, cfg, start=start)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Append one row to ``metrics.jsonl`` (strict JSON) and send it to the reporters."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / self.METRICS, "a") as f:
            f.write(config.json_text(row) + "\n")
        if self.reporter is not None:
            self.reporter.log(row, step=step)

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None

    # ---- checkpoints -----------------------------------------------------------------------------------
    def find_checkpoint(self, marker: str = "trainer.pt") -> Path | None:
        return find_checkpoint(self.path, marker)

    def save_checkpoint(self, policy: Policy, states: dict[str, Any]) -> Path:
        """:func:`write_checkpoint` (main process only; every process gets the folder's path)."""
        if self.main:
            write_checkpoint(self.path, policy, states)
        return self.path / self.CHECKPOINT

    def keep_copy(self, folder: Path, name: str) -> None:
        """Copy a checkpoint folder to ``run_dir/<name>`` atomically (an online run's ``checkpoint-offline``)."""
        if not self.main:
            return
        dst = self.path / name
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)

    def resume(self, trainer) -> bool:
        """Load the newest complete checkpoint into `trainer` (its policy's weights and its state) with the metrics
        up to it (``trainer.history``; later rows are dropped from the file); True when there was one."""
        folder = self.find_checkpoint()
        if folder is None:
            return False
        trainer.policy.load(folder)
        trainer.load_state_dict(torch.load(folder / "trainer.pt", map_location="cpu", weights_only=False))
        trainer.history = self.history(up_to=trainer.step)
        distributed.barrier()  # every process has read the history before the main one rewrites it
        self.restart_metrics(trainer.history)
        return True

    # ---- results ---------------------------------------------------------------------------------------
    def write_json(self, name: str, record: Any) -> Path:
        """``run_dir/<name>`` as indented strict JSON, atomically (main process only)."""
        path = self.path / name
        if self.main:
            write_json(path, record)
        return path

    def read_json(self, name: str) -> Any | None:
        """``run_dir/<name>`` read back, or None when it is not there."""
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented strict JSON (NaN as null: ``config.json_text``) atomically (temp file + rename)."""
    return config.write_text_atomic(path, config.json_text(obj, indent=2))


def write_checkpoint(run_dir: str | os.PathLike, policy: Policy, states: dict[str, Any]) -> Path:
    """Write ``run_dir/checkpoint``: the policy's weights and each ``{file name: state}`` (``torch.save``), in a
    complete new folder that replaces the old one by renames (a kill leaves ``checkpoint`` or
    ``checkpoint.old`` whole, never half of one). The last name of `states` is written last: a folder holding it
    is complete."""
    run_dir = Path(run_dir)
    final, tmp, old = (run_dir / n for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp)
    for name, state in states.items():
        torch.save(state, tmp / name)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(run_dir: str | os.PathLike, marker: str = "trainer.pt") -> Path | None:
    """The newest complete checkpoint folder of a run (``checkpoint``, else ``checkpoint.old`` left by a kill
    between two renames), recognised by its `marker` file; None when there is none."""
    run_dir = Path(run_dir)
    return next((run_dir / n for n in ("checkpoint", "checkpoint.old") if (run_dir / n / marker).is_file()), None)


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """The update a checkpoint folder was saved at (its ``trainer.pt``); None for a folder without one."""
    path = Path(folder) / "trainer.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"])  # mapped, not read


def load_history(run_dir: str | os.PathLike, up_to: int | None = None, key: str = "step") -> list[dict[str, float]]:
    """Read ``metrics.jsonl`` of a run (ignoring a torn last line); keep rows whose `key` (``step``: the update,
    ``epoch`` in online runs) is ``<= up_to`` if given. A ``null`` (a metric undefined in its row) reads as NaN."""
    path = Path(run_dir) / RunDir.METRICS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if up_to is None or m[key] <= up_to:
            out.append({k: math.nan if v is None else v for k, v in m.items()})
    return out
