"""MiniWoB++ env speed and memory: vlmq's launch settings against BrowserGym's defaults (a benchmark, not a test).

Both settings drive the same Debian Chromium through the same BrowserGym ``BrowserEnv`` (its task page and its chat
window, two browsers per env); they differ in what vlmq sets: ``slow_mo`` 0 instead of the task's 100 ms per
Playwright operation, and ``pre_observation_delay`` 0.1 s instead of BrowserGym's 0.5 s. The two settings alternate
(ABAB) over ``--rounds`` rounds in one process, each round timing one reset and ``--steps`` valid steps that leave
the episode running (``hover`` on click-test's button), so both see the same machine. Memory: ``--envs`` envs
opened one after another (vlmq's settings); the proportional set size of the processes they start (Playwright's
driver, both browsers) per env, and the fall of the system's available memory as each opens, from psutil. Prints
seconds per reset, steps per second, their ratios, and GB per env. Run:
``python benchmarks/bench_miniwob.py [--task click-test] [--rounds 4] [--steps 8] [--envs 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

from vlmq_core.envs import make_env
from vlmq_core.envs.miniwob import MiniWoBEnv
from vlmq_core.envs.text_action import TextActionEnv

SETTINGS = {
    "vlmq": {"slow_mo": 0, "pre_observation_delay": 0.1},
    "BrowserGym defaults": {"slow_mo": None, "pre_observation_delay": 0.5},
}


def descendants() -> dict[int, psutil.Process]:
    """This process's children, grandchildren... (Playwright's driver and every Chromium process it starts)."""
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def pss_gb(procs: list[psutil.Process]) -> float:
    """Proportional set size summed over `procs`: shared pages split between their users, so the sum over
    Chromium's many processes does not count its shared libraries once per process (RSS would)."""
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**30


def time_round(env: TextActionEnv, steps: int, seed: int) -> tuple[float, float]:
    """Seconds of one reset, and of each of `steps` valid steps (mean)."""
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    reset_s = time.perf_counter() - t0
    bid = obs["text"].split("[", 1)[1].split("]", 1)[0]  # the first element with a bid
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, info = env.step(f'[action] hover("{bid}")')
        assert info["valid"] and not (terminated or truncated), info["error"]
    return reset_s, (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="click-test")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--envs", type=int, default=3, help="envs opened one after another for the memory figure")
    args = parser.parse_args()

    envs = {name: make_env(f"MiniWoB-{args.task}", **kw) for name, kw in SETTINGS.items()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in envs}
    for env in envs.values():  # warm-up: Playwright's start, the first launches
        time_round(env, 1, seed=0)
    for r in range(args.rounds):
        order = list(envs) if r % 2 == 0 else list(envs)[::-1]
        for name in order:
            times[name].append(time_round(envs[name], args.steps, seed=r + 1))
    for env in envs.values():
        env.close()

    print(f"MiniWoB-{args.task}, {args.rounds} rounds of 1 reset + {args.steps} steps per setting, alternating")
    rows = {}
    for name, ts in times.items():
        reset_s = statistics.mean(t[0] for t in ts)
        step_s = statistics.mean(t[1] for t in ts)
        rows[name] = (reset_s, step_s)
        print(f"  {name:>20}: reset {reset_s:.2f} s, step {step_s:.3f} s ({1 / step_s:.1f} steps/s)")
    (ours_reset, ours_step), (bg_reset, bg_step) = rows["vlmq"], rows["BrowserGym defaults"]
    print(f"  vlmq / BrowserGym: reset {bg_reset / ours_reset:.2f}x faster, steps {bg_step / ours_step:.2f}x faster")

    before = set(descendants())
    available = [psutil.virtual_memory().available]
    opened = []
    for seed in range(args.envs):  # one more env at a time: what each adds
        opened.append(make_env(f"MiniWoB-{args.task}"))
        opened[-1].reset(seed=seed)
        time.sleep(1.0)  # let the pages settle
        available.append(psutil.virtual_memory().available)
    new = [p for pid, p in descendants().items() if pid not in before]
    pss = pss_gb(new)
    drops = [(a - b) / 2**30 for a, b in zip(available[:-1], available[1:], strict=True)]
    print(
        f"  memory, {args.envs} envs ({len(new)} processes: driver and Chromium): {pss / args.envs:.2f} GB each "
        f"(PSS); the system's available memory fell by {', '.join(f'{d:.2f}' for d in drops)} GB as each opened; "
        f"MiniWoBEnv.MEMORY_GB assumes {MiniWoBEnv.MEMORY_GB} GB"
    )
    for env in opened:
        env.close()


if __name__ == "__main__":
    main()
