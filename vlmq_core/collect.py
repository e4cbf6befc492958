"""Batched collection over N parallel text-action environments, with action-prompting strategies.

One step of all active environments costs one batched ``generate`` call. Strategies (METHOD.md,
"Data and exploration"): ``agent`` (the model replies freely), ``min_format`` (the reply is prefilled with
``[action]`` and the model completes it), ``random`` (a random valid action written as text; no model).
Every turn goes to the buffer when one is given; evaluation is collection with ``agent`` and no buffer.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from vlmq_core.envs import make_env
from vlmq_core.envs.oracles import OracleConfig, oracle_reply
from vlmq_core.model import Policy
from vlmq_core.turns import Turn, png_bytes

STRATEGIES = ("agent", "min_format", "random", "oracle")
ACTION_TAG = "[action]"


@dataclass
class CollectConfig:
    """How episodes are collected (METHOD.md Tables 2-3, Gym Cards column)."""

    task: str = "NumberLine"
    """Environment name for :func:`vlmq_core.envs.make_env`."""
    strategy: str = "agent"
    """``agent``, ``min_format``, ``random`` or ``oracle`` (the task's oracle, see ``oracle_corrupt_rate``)."""
    num_envs: int = 6
    """Parallel environments (one batched generate per step)."""
    temperature: float = 0.4
    """Sampling temperature; 0 means greedy."""
    max_reply_tokens: int = 24
    """Maximum new tokens per reply."""
    use_images: bool = True
    """Pass the rendered image to VLMs (text-only models always get the text summary alone)."""
    oracle_corrupt_rate: float = 0.0
    """``oracle`` strategy: probability that a turn's action is replaced by a random valid one."""
    oracle_thought: bool = False
    """``oracle`` strategy: write the oracle's short reason before the action (``Thought: ...``)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"CollectConfig.strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        OracleConfig(self.oracle_corrupt_rate, self.oracle_thought)  # validates the rate


@dataclass
class EpisodeResult:
    """The outcome of one finished episode."""

    episode_id: str
    seed: int
    ret: float
    length: int
    success: bool
    valid_turns: int


def collect(
    policy: Policy | None,
    cfg: CollectConfig,
    episodes: int,
    seed: int = 0,
    buffer=None,
    source: str | None = None,
    progress: bool = True,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes (seeds ``seed, seed+1, ...``) and return their results in seed order.

    Turns go to ``buffer.add`` as each episode finishes (so a killed run keeps every finished episode).
    """
    if cfg.strategy not in ("random", "oracle") and policy is None:
        raise ValueError(f"strategy {cfg.strategy!r} needs a policy; only 'random' and 'oracle' run without one.")
    if source is None:
        source = {"random": "random", "oracle": f"oracle@{cfg.oracle_corrupt_rate:g}"}.get(cfg.strategy) or policy.name
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    envs = [make_env(cfg.task) for _ in range(min(cfg.num_envs, episodes))]
    next_seed, results = seed, []
    slots: list[dict | None] = [None] * len(envs)

    def start(i: int) -> None:
        nonlocal next_seed
        if next_seed >= seed + episodes:
            slots[i] = None
            return
        obs, info = envs[i].reset(seed=next_seed)
        slots[i] = {"seed": next_seed, "id": uuid.uuid4().hex[:12], "obs": obs, "turns": [], "state": info["state"]}
        next_seed += 1

    for i in range(len(envs)):
        start(i)
    bar = tqdm(total=episodes, desc=f"collect {cfg.task}/{cfg.strategy}", disable=not progress, leave=False)
    while any(s is not None for s in slots):
        active = [i for i, s in enumerate(slots) if s is not None]
        replies = _replies(policy, cfg, [slots[i]["obs"] for i in active], [envs[i] for i in active], rng)
        for i, reply in zip(active, replies, strict=True):
            s = slots[i]
            obs = s["obs"]
            nobs, reward, term, trunc, info = envs[i].step(reply)
            image = obs["image"] if (cfg.use_images and obs.get("image") is not None) else None
            turn = Turn(
                episode_id=s["id"],
                t=len(s["turns"]),
                task=envs[i].spec.id,
                prompt=obs["prompt"],
                image=png_bytes(image) if image is not None else None,
                reply=reply,
                reward=float(reward),
                done=bool(term or trunc),
                truncated=bool(trunc and not term),
                source=source,
                strategy=cfg.strategy,
                valid=bool(info["valid"]),
                obs=obs["text"],
                info=json.dumps(s["state"]),
            )
            s["turns"].append(turn)
            s["obs"], s["state"] = nobs, info["state"]
            if term or trunc:
                turns = s["turns"]
                results.append(
                    EpisodeResult(
                        episode_id=s["id"],
                        seed=s["seed"],
                        ret=sum(t.reward for t in turns),
                        length=len(turns),
                        success=bool(info.get("success", False)),
                        valid_turns=sum(t.valid for t in turns),
                    )
                )
                if buffer is not None:
                    buffer.add(turns)
                bar.update(1)
                start(i)
    bar.close()
    if buffer is not None:
        buffer.flush()
    return sorted(results, key=lambda r: r.seed)


def _replies(policy: Policy | None, cfg: CollectConfig, observations: list[dict], envs, rng) -> list[str]:
    if cfg.strategy == "random":
        return [env.random_reply(rng) for env in envs]
    if cfg.strategy == "oracle":
        ocfg = OracleConfig(cfg.oracle_corrupt_rate, cfg.oracle_thought)
        return [oracle_reply(env, rng, ocfg) for env in envs]
    images = [o.get("image") if (cfg.use_images and policy.is_vlm) else None for o in observations]
    prefixes = [ACTION_TAG] * len(observations) if cfg.strategy == "min_format" else None
    return policy.generate(
        [o["prompt"] for o in observations],
        images,
        max_new_tokens=cfg.max_reply_tokens,
        temperature=cfg.temperature,
        prefixes=prefixes,
    )


def summarize(results: list[EpisodeResult], prefix: str = "eval") -> dict[str, float]:
    """Success rate, valid-syntax rate (valid replies / all replies), mean return and length, episode count."""
    if not results:
        raise ValueError("No finished episodes to summarise.")
    turns = sum(r.length for r in results)
    return {
        f"{prefix}/success": float(np.mean([r.success for r in results])),
        f"{prefix}/valid": sum(r.valid_turns for r in results) / turns,
        f"{prefix}/return": float(np.mean([r.ret for r in results])),
        f"{prefix}/length": turns / len(results),
        f"{prefix}/episodes": float(len(results)),
    }


def evaluate(
    policy: Policy, cfg: CollectConfig, episodes: int, seed: int = 10_000, progress: bool = True
) -> dict[str, float]:
    """Evaluate the policy with the ``agent`` strategy on seeds ``seed..seed+episodes-1`` (no buffer)."""
    eval_cfg = CollectConfig(**{**cfg.__dict__, "strategy": "agent"})
    return summarize(collect(policy, eval_cfg, episodes, seed=seed, progress=progress), prefix="eval")


def collect_missing(
    policy: Policy | None, cfg: CollectConfig, buffer, episodes: int, seed: int, source: str | None = None
) -> list[EpisodeResult]:
    """Dataset building that resumes: top the buffer up to ``episodes`` complete episodes of this strategy.

    Episodes already in the buffer for ``cfg.strategy`` (from an earlier, possibly killed run) are kept and
    counted; only the rest are collected, on the seeds after those already used.
    """
    have = sum(1 for turns in buffer.episodes().values() if turns[0].strategy == cfg.strategy and turns[-1].done)
    if have >= episodes:
        return []
    return collect(policy, cfg, episodes - have, seed=seed + have, buffer=buffer, source=source)
