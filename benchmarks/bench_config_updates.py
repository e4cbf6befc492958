"""Updates per hour of a run config on its own data: ``Trainer.train_step`` as ``vlmq train`` / ``vlmq online`` run it.

Builds (or reuses) the config's dataset, the policy and the trainer as a run does, calibrates the critic's inputs,
then times ``--updates`` updates from a fresh trainer: cache misses, warm-ups and all, as a run meets them. Prints
the mean and median seconds per update and updates per hour. It uses only what every vlmq version has, so the same
file times older code: from a worktree of another commit,
``PYTHONPATH=<worktree> python benchmarks/bench_config_updates.py configs/numberline_online.yaml`` (and keep the
CPU otherwise idle; compare runs made back to back on one machine).

Run: ``python benchmarks/bench_config_updates.py CONFIG [--updates 60] [key=value ...]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlmq_core import hardware
from vlmq_core.model import load_policy
from vlmq_core.run import collect_data, load_config, open_dataset, policy_config
from vlmq_core.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_intermixed_args()
    cfg = load_config(args.config, args.overrides)
    buffer = open_dataset(cfg)
    if not len(buffer):  # a config without a dataset (BabyAI online) names one in its overrides (data.sources=...)
        buffer = collect_data(cfg, progress=False)
    torch.manual_seed(cfg.train.seed)
    policy = load_policy(policy_config(cfg, buffer))
    trainer = Trainer(policy, buffer, cfg.train, cfg.loss)
    t0 = time.perf_counter()
    if trainer.whitening_active:
        trainer.calibrate_critic_inputs(progress=False)
    calib = time.perf_counter() - t0
    times = [trainer.train_step()["time/update_s"] for _ in range(args.updates)]
    mean, median = statistics.mean(times), statistics.median(times)
    print(
        f"{args.config} {' '.join(args.overrides)}: {hardware.describe()}; {len(buffer)} turns, "
        f"{cfg.train.batch_size} a minibatch x {cfg.train.grad_accum}; calibration {calib:.1f} s; "
        f"{args.updates} updates: mean {mean:.3f} s, median {median:.3f} s, {3600 / mean:.0f} updates/hour"
    )


if __name__ == "__main__":
    main()
