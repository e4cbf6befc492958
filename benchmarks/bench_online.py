"""Online collection speed and where an online epoch's time goes (a benchmark, not a test).

1. Collection: the same ``--episodes`` episodes (``agent``, seeds 0..) played with N environments batched (one
   ``generate`` per step over all active environments) for each N of ``--sizes``; N = 1 is one at a time.
   Replies are greedy (temperature 0), so every N plays the same episodes; the script checks it and prints
   env-steps/s and the speed-up over N = 1, all measured in this one run.
2. One online epoch of ``--config`` (default ``configs/numberline_online.yaml``) started from a small random
   dataset: ``--steps-per-env`` steps in each environment, ``--updates`` updates, an ``--eval-episodes``
   evaluation. Prints the share of the epoch's wall time spent generating (collection), training and evaluating.

Run: ``python benchmarks/bench_online.py [--model embedded] [--sizes 1 8 32] [--episodes 32]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vlmq_core import hardware
from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, SourceConfig, collect
from vlmq_core.model import ModelConfig, PolicyConfig, load_policy
from vlmq_core.run import load_config, online

ROOT = Path(__file__).resolve().parents[1]


def collection_speed(policy, task: str, sizes: list[int], episodes: int) -> list[dict]:
    rows, reference = [], None
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            buffer = TurnBuffer(tmp)
            cfg = CollectConfig(task=task, num_envs=n, temperature=0.0)
            t0 = time.perf_counter()
            results = collect(policy, cfg, SourceConfig("agent", episodes, 0), buffer=buffer, progress=False)
            seconds = time.perf_counter() - t0
            replies = {s: [t.reply for t in ts] for s, ts in ((ts[0].seed, ts) for ts in buffer.episodes().values())}
        steps = sum(r.length for r in results)
        reference = reference or replies
        same = sum(replies[s] == reference[s] for s in reference)
        rows.append({"num_envs": n, "env_steps": steps, "seconds": seconds, "steps_per_s": steps / seconds})
        rows[-1]["same_episodes"] = f"{same}/{len(reference)}"
    base = rows[0]["steps_per_s"]
    for row in rows:
        row["speedup"] = row["steps_per_s"] / base
    return rows


def epoch_shares(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"model.name={args.model}",
            f"model.device={args.device}",
            f"run_dir={tmp}/run",
            f"data.path={tmp}/data",
            "online.epochs=1",
            "online.offline_epochs=0",
            f"online.steps_per_env={args.steps_per_env}",
            f"online.updates_per_epoch={args.updates}",
            f"eval.episodes={args.eval_episodes}",
        ]
        cfg = load_config(args.config, overrides)
        data = TurnBuffer(cfg.data.path)
        collect(None, cfg.collect, SourceConfig("random", 40, 0), buffer=data, progress=False)
        row = online(cfg, progress=False).history[-1]
    total = row["time/epoch_s"]
    parts = {k: row.get(f"time/{k}_s", 0.0) for k in ("generate", "train", "eval")}
    out = {"epoch_s": total, **{f"{k}_share": v / total for k, v in parts.items()}}
    out |= {"other_share": 1 - sum(parts.values()) / total, "env_steps": row["online/env_steps"]}
    out |= {"updates": row["online/updates"], "eval_episodes": row["eval/episodes"], "num_envs": cfg.collect.num_envs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--task", default="NumberLine")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--episodes", type=int, default=32, help="episodes per setting (at least the largest N)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "numberline_online.yaml"))
    ap.add_argument("--steps-per-env", type=int, default=6)
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--eval-episodes", type=int, default=10)
    args = ap.parse_args()

    print(f"hardware: {hardware.describe()}")
    policy = load_policy(PolicyConfig(model=ModelConfig(name=args.model, device=args.device)))
    rows = collection_speed(policy, args.task, args.sizes, args.episodes)
    del policy
    steps = rows[0]["env_steps"]
    print(f"\n1. collection, {args.task}, {args.episodes} greedy agent episodes per setting ({steps} steps)")
    print(f"{'envs':>5} {'seconds':>8} {'steps/s':>8} {'x one at a time':>16} {'same episodes':>14}")
    for r in rows:
        line = f"{r['num_envs']:>5} {r['seconds']:>8.1f} {r['steps_per_s']:>8.2f} {r['speedup']:>16.2f}"
        print(f"{line} {r['same_episodes']:>14}")
    torch.manual_seed(0)
    shares = epoch_shares(args)
    print(
        f"\n2. one online epoch of {Path(args.config).name}: {shares['env_steps']} env steps in {shares['num_envs']} "
        f"envs, {shares['updates']} updates, {int(shares['eval_episodes'])} eval episodes: {shares['epoch_s']:.1f} s"
    )
    print(
        f"   generating {shares['generate_share']:.0%}, training {shares['train_share']:.0%}, "
        f"evaluating {shares['eval_share']:.0%}, other (buffer, bookkeeping) {shares['other_share']:.0%}"
    )
    print(json.dumps({"hardware": hardware.describe(), "collection": rows, "epoch": shares}))


if __name__ == "__main__":
    main()
