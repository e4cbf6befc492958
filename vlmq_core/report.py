"""Metrics to TensorBoard or Weights & Biases, when a run asks (``train.report_to``, as TRL and accelerate name it).

``metrics.jsonl`` in the run directory is always written; these are extra views of the same rows. Only numbers
are reported (``buffer/by_source`` and other mappings stay in the JSON lines). A resumed run reports from where
its checkpoint was: TensorBoard's events after that step are purged, W&B continues the same run id (kept in
``run_dir/wandb_id``).
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmq_core.config import ConfigError

REPORTERS = ("tensorboard", "wandb")


def check_report_to(names: list[str]) -> None:
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise ConfigError(f"train.report_to: unknown {unknown}; choose from {', '.join(REPORTERS)} (or []).")


class Reporter:
    """Sends metric rows to each integration of `report_to`; a no-op for ``[]``.

    TensorBoard events go to ``run_dir/tensorboard``; W&B runs in ``run_dir`` (``WANDB_MODE=offline`` works
    without a network). `start` is the step the run resumes after (0 for a new run).
    """

    def __init__(self, run_dir: str | os.PathLike, report_to: list[str], config: Mapping[str, Any], start: int = 0):
        check_report_to(report_to)
        self.run_dir = Path(run_dir)
        self.tb = self.wandb = None
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError(
                    "train.report_to has tensorboard, which is not installed: `pip install tensorboard` "
                    "(or remove it from train.report_to)."
                ) from e
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start + 1 if start else None)
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError as e:
                raise ConfigError(
                    "train.report_to has wandb, which is not installed: `pip install wandb` (or remove it)."
                ) from e
            id_file = self.run_dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id)
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "vlmq"),
                name=self.run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(self.run_dir),
                config=dict(config),
            )

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Report the numeric values of one metrics row at `step`."""
        numbers = {k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        numbers = {k: v for k, v in numbers.items() if not math.isnan(v)}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
