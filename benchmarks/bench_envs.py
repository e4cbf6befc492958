"""Mean time per env step, rendering included, for every Gym Cards task (a benchmark, not a test).

Each raw env takes `--steps` uniformly random actions (resetting when an episode ends; resets are not
timed) and renders its observation on every step, as an episode would. The text-action wrapper column
adds reply parsing, the PIL conversion of the frame and the prompt text. Run:
``python benchmarks/bench_envs.py [--steps 2000]``.
"""

from __future__ import annotations

import argparse
import time

import gymnasium
import numpy as np

from vlmq_core.envs import env_id, make_env

GYM_CARDS = ("NumberLine", "Blackjack", "EZPoints", "Points24")


def time_raw(name: str, steps: int, seed: int = 0) -> float:
    """Mean milliseconds per ``env.step`` (which renders the returned frame) of the raw env."""
    env = gymnasium.make(env_id(name)).unwrapped
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.step(0)  # warm the card / glyph caches outside the timing
    env.reset(seed=seed)
    return _mean_step_ms(env, steps, lambda: int(rng.integers(env.action_space.n)))


def time_wrapped(name: str, steps: int, seed: int = 0) -> float:
    """Mean milliseconds per text-action ``env.step(reply)`` with random valid replies."""
    env = make_env(name, seed=seed)
    rng = np.random.default_rng(seed)
    env.reset()
    return _mean_step_ms(env, steps, lambda: env.random_reply(rng))


def _mean_step_ms(env, steps: int, next_action) -> float:
    """Mean milliseconds per ``env.step(next_action())``, resetting (untimed) when an episode ends."""
    total = 0.0
    for _ in range(steps):
        action = next_action()
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        total += time.perf_counter() - start
        if terminated or truncated:
            env.reset()
    return 1000 * total / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="random steps per task")
    args = parser.parse_args()
    print(f"{'task':<12} {'raw step+render ms':>19} {'text wrapper ms':>16}")
    for name in GYM_CARDS:
        print(f"{name:<12} {time_raw(name, args.steps):>19.3f} {time_wrapped(name, args.steps):>16.3f}")


if __name__ == "__main__":
    main()
