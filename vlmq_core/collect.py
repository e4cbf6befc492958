"""Batched collection over N parallel text-action environments, with action-prompting strategies.

One step of all active environments costs one batched ``generate`` call. Strategies (METHOD.md,
"Data and exploration"): ``agent`` (the model replies freely), ``min_format`` (the reply is prefilled with
``[action]`` and the model completes it), ``random`` (a random valid action written as text; no model) and
``oracle`` (the task's oracle, optionally corrupted; no model). Each finished episode goes to the buffer
before collection moves on; evaluation is collection with ``agent`` and no buffer.

A dataset is a list of sources (:class:`SourceConfig`: strategy, episodes, first seed); :func:`build_dataset`
tops a buffer up to it and is resumable: it collects exactly the seeds whose episodes are not on disk yet.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Self

import numpy as np

from vlmq_core import distributed, hardware
from vlmq_core.buffer import TurnBuffer
from vlmq_core.config import ConfigError, check_fields, require
from vlmq_core.envs import env_id, get_task, make_env, task_name
from vlmq_core.envs.oracles import OracleConfig, oracle_reply
from vlmq_core.envs.text_action import ACTION_TAG
from vlmq_core.progress import bar as progress_bar
from vlmq_core.turns import Turn, png_bytes
from vlmq_core.vision import EMBEDDED_VLM

if TYPE_CHECKING:  # collecting random or oracle data needs no torch
    from vlmq_core.model import Policy

Strategy = Literal["agent", "min_format", "partial", "random", "oracle"]
MODEL_STRATEGIES = ("agent", "min_format", "partial")
"""Strategies whose reply the model writes (one batched ``generate`` over all of them)."""


@dataclass
class CollectConfig:
    """How episodes are played, for collection and evaluation alike (METHOD.md Tables 2-3, Gym Cards column)."""

    task: str = "NumberLine"
    """Task name for :func:`vlmq_core.envs.make_env` (``NumberLine``, ``Blackjack``, ``EZPoints``, ``Points24``,
    ``BabyAI-<Level>``)."""
    num_envs: int = 6
    """Parallel environments (one batched generate per step)."""
    temperature: float = 0.4
    """Sampling temperature; 0 means greedy."""
    max_reply_tokens: int = 24
    """Maximum new tokens per reply."""
    use_images: bool = True
    """Pass the rendered image to VLMs (text-only models always get the text summary alone)."""
    observation_text: bool = True
    """Write the state summary into the prompt; false: a VLM sees the state in the image alone (the paper's
    image-only prompting, Figures 4 and 8; the prompt says the state is shown in the image)."""
    view: Literal["full", "pov"] = "full"
    """BabyAI's image: ``full`` (the whole grid, the agent's 7x7 field of view lightened) or ``pov`` (that field of
    view alone, the agent at the bottom centre facing up: what BabyAI's text describes, and the view
    ``embedded-vlm`` learned to read). Other tasks have one image: ``full``."""

    def __post_init__(self) -> None:
        check_fields(self, "collect.")
        try:
            task_name(self.task)
        except ValueError as e:
            raise ConfigError(f"collect.task: {e}.") from e
        if self.view != "full" and not task_name(self.task).startswith("BabyAI-"):
            raise ConfigError(
                f"collect.view={self.view} is a BabyAI view; {self.task} has one image: leave collect.view at full."
            )
        if not (self.use_images or self.observation_text):
            raise ConfigError(
                "collect.use_images and collect.observation_text are both false: the model would see no state."
            )
        at_least_1 = (lambda v: v >= 1, ">= 1")
        require(
            self,
            "collect.",
            {"num_envs": at_least_1, "max_reply_tokens": at_least_1, "temperature": (lambda v: v >= 0, ">= 0")},
        )


@dataclass
class SourceConfig:
    """One kind of data in a dataset: a strategy, how many episodes, and the seed of the first one."""

    strategy: Strategy = "random"
    """``random`` (valid actions as text), ``agent`` (the run's model), ``min_format`` (the model, ``[action]``
    prefilled), ``partial`` (the model, ``[action]`` and the start of a random action prefilled: a web task's
    ``[action] click(``, the paper's partial exploration) or ``oracle`` (the task's oracle)."""
    episodes: int = 100
    """Episodes of this source, on seeds ``seed .. seed + episodes - 1``."""
    seed: int = 0
    """Seed of the first episode (give sources seed ranges that do not overlap)."""
    corrupt_rate: float = 0.0
    """``oracle`` only: probability that a turn's action is replaced by a random valid one."""
    thought: bool = False
    """``oracle`` only: write the oracle's short reason before the action (``Thought: ...``)."""
    task: str | None = None
    """This source's task (None: ``collect.task``): one dataset over several tasks, e.g. MiniWoB's click tasks."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.task is not None:
            try:
                task_name(self.task)
            except ValueError as e:
                raise ConfigError(f"A source's task: {e}.") from e
        if self.episodes < 0:
            raise ConfigError(f"A source's episodes must be >= 0, not {self.episodes}.")
        OracleConfig(self.corrupt_rate, self.thought)  # validates the rate

    @property
    def needs_model(self) -> bool:
        return self.strategy in MODEL_STRATEGIES

    @property
    def seeds(self) -> range:
        return range(self.seed, self.seed + self.episodes)


def _default_sources() -> list[SourceConfig]:
    return [SourceConfig("random", 120, 0), SourceConfig("agent", 12, 1000), SourceConfig("min_format", 12, 2000)]


@dataclass
class DataConfig:
    """The dataset a run trains on: where it lives and the sources that build it (``vlmq collect``)."""

    path: str = "runs/data"
    """Folder of Parquet shards (created by ``vlmq collect``; text and PNG, never token ids, so any model trains)."""
    sources: list[SourceConfig] = field(default_factory=_default_sources)
    """The sources, each a mapping of SourceConfig fields: ``{strategy: random, episodes: 120, seed: 0}``."""
    max_turns: int | None = None
    """FIFO cap on the stored turns (None: keep everything)."""

    def __post_init__(self) -> None:
        check_fields(self, "data.")


@dataclass
class EvalConfig:
    """Held-out evaluation: the ``agent`` strategy on seeds no dataset uses."""

    episodes: int = 20
    """Episodes per evaluation (0: none); one standard error of a success rate near 50% is ~11 points at 20."""
    seed: int = 10_000
    """Seed of the first evaluation episode."""
    num_envs: int | None = None
    """Parallel environments while evaluating (None: ``collect.num_envs``). Held-out episodes are independent, so a
    batch wider than collection's shortens an evaluation whose episodes are long (BabyAI: up to 64 generate calls)."""

    def __post_init__(self) -> None:
        check_fields(self, "eval.")
        if self.num_envs is not None and self.num_envs < 1:
            raise ConfigError(f"eval.num_envs must be >= 1 (or null: collect.num_envs), got {self.num_envs}.")


@dataclass
class EpisodeResult:
    """The outcome of one finished episode."""

    episode_id: str
    seed: int
    ret: float
    length: int
    success: bool
    valid_turns: int


def source_name(policy: Policy | None, source: SourceConfig) -> str:
    """What a turn's ``source`` field says: ``random``, ``oracle@<corrupt rate>`` or the model's name."""
    if source.strategy == "random":
        return "random"
    if source.strategy == "oracle":
        return f"oracle@{source.corrupt_rate:g}"
    if policy is None:
        raise ValueError(f"strategy {source.strategy!r} needs a policy; only 'random' and 'oracle' run without one.")
    return policy.name


class ResumeError(RuntimeError):
    """An episode in flight cannot be rebuilt from its seed and recorded replies (the message says why)."""


@dataclass
class Slot:
    """The episode one environment is playing: its seed, id, turns so far, current observation and generator."""

    seed: int
    episode_id: str
    obs: dict
    state: dict
    rng: np.random.Generator
    """This episode's generator: random replies, oracle corruption and (online) the per-turn strategy draw."""
    turns: list[Turn] = field(default_factory=list)


class EnvSlots:
    """`n` environments of one task stepped in lockstep, each playing one episode at a time.

    :meth:`step` asks for one reply per active environment (one batched ``generate`` over the turns that need the
    model, whatever mix of strategies they use), steps them, and returns the episodes that finished. The
    environments are built once and closed by :meth:`close` (or leaving a ``with`` block).
    """

    def __init__(self, cfg: CollectConfig, n: int, policy: Policy | None = None):
        self.cfg, self.policy = cfg, policy
        if policy is not None and not policy.is_vlm and not cfg.observation_text:
            raise ConfigError(
                f"collect.observation_text=false leaves {policy.name}, a text-only model, no state to read: "
                "keep it true, or use a VLM."
            )
        if policy is not None and cfg.use_images and cfg.view == "full" and task_name(cfg.task).startswith("BabyAI-"):
            if policy.cfg.model.name == EMBEDDED_VLM:
                raise ConfigError(
                    "embedded-vlm learned BabyAI from the agent's point of view (notebook 00), not the whole grid: "
                    "set collect.view=pov."
                )
        n = memory_cap(cfg.task, n)
        view = {"view": cfg.view} if cfg.view != "full" else {}  # only BabyAI's env takes a view
        self.envs = [make_env(cfg.task, show_text=cfg.observation_text, **view) for _ in range(n)]
        self.slots: list[Slot | None] = [None] * n
        self.last_turns: list[Turn] = []
        """The turns the last :meth:`step` took, one per slot that was active."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for env in self.envs:
            env.close()

    @property
    def active(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is not None]

    def start(self, i: int, seed: int, episode_id: str | None = None) -> Slot:
        """Reset environment `i` on `seed`; the episode's generator is seeded by the seed alone."""
        obs, info = self.envs[i].reset(seed=seed)
        rng = np.random.default_rng([seed, 7])
        self.slots[i] = Slot(seed, episode_id or uuid.uuid4().hex[:12], obs, info["state"], rng)
        return self.slots[i]

    def step(
        self, strategies: Sequence[str], names: Sequence[str], ocfg: OracleConfig
    ) -> list[tuple[int, list[Turn], EpisodeResult]]:
        """One reply per active slot (``strategies[k]`` and ``names[k]`` for the k-th active slot), one env step
        each. Returns ``(slot index, turns, result)`` per finished episode; its slot is then empty."""
        active = self.active
        replies = _replies(self.policy, self.cfg, strategies, ocfg, [self.slots[i] for i in active], self.envs, active)
        finished, self.last_turns = [], []
        for i, reply, strategy, name in zip(active, replies, strategies, names, strict=True):
            done, result = self.apply(i, reply, strategy, name)
            self.last_turns.append(self.slots[i].turns[-1])
            if done:
                finished.append((i, self.slots[i].turns, result))
                self.slots[i] = None
        return finished

    def apply(self, i: int, reply: str, strategy: str, name: str) -> tuple[bool, EpisodeResult | None]:
        """Step environment `i` with `reply` and record the turn; ``(episode over, its result or None)``."""
        s, env = self.slots[i], self.envs[i]
        obs = s.obs
        nobs, reward, term, trunc, info = env.step(reply)
        image = obs["image"] if (self.cfg.use_images and obs.get("image") is not None) else None
        s.turns.append(
            Turn(
                episode_id=s.episode_id,
                t=len(s.turns),
                task=env.spec.id,
                prompt=obs["prompt"],
                image=png_bytes(image) if image is not None else None,
                reply=reply,
                reward=float(reward),
                done=bool(term or trunc),
                truncated=bool(trunc and not term),
                source=name,
                strategy=strategy,
                valid=bool(info["valid"]),
                obs=obs["text"],
                info=json.dumps(s.state),
                seed=s.seed,
            )
        )
        s.obs, s.state = nobs, info["state"]
        if not (term or trunc):
            return False, None
        turns = s.turns
        return True, EpisodeResult(
            episode_id=s.episode_id,
            seed=s.seed,
            ret=sum(t.reward for t in turns),
            length=len(turns),
            success=bool(info.get("success", False)),
            valid_turns=sum(t.valid for t in turns),
        )

    def replay(self, i: int, seed: int, episode_id: str, turns: list[Turn], rng_state: dict) -> Slot:
        """Rebuild an episode in progress (a resumed run): reset on its seed, step through its recorded replies,
        and check that the environment shows the same prompts again. Restores the episode's generator."""
        slot = self.start(i, seed, episode_id)
        for turn in turns:
            if slot.obs["prompt"] != turn.prompt:
                raise ResumeError(
                    f"Replaying episode {episode_id} (seed {seed}) of {self.cfg.task} gave another prompt at turn "
                    f"{turn.t}: the environment is not deterministic given its seed, so this run cannot resume."
                )
            done, _ = self.apply(i, turn.reply, turn.strategy, turn.source)
            if done:
                raise ResumeError(
                    f"Replaying episode {episode_id} (seed {seed}) of {self.cfg.task} ended it early: the environment "
                    "is not deterministic given its seed, so this run cannot resume."
                )
        slot.turns = list(turns)
        slot.rng.bit_generator.state = rng_state
        return slot


def collect(
    policy: Policy | None,
    cfg: CollectConfig,
    source: SourceConfig,
    buffer: TurnBuffer | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    label: str = "collect",
) -> list[EpisodeResult]:
    """Play one episode per seed (default: ``source.seeds``) and return the results in seed order. The progress
    bar (named `label`) counts finished episodes and shows the batched step it is on, with no time estimate: the
    episodes of a batch all finish near its end, so any estimate before then would mislead.

    Each finished episode's turns go to ``buffer.add``, which writes them to disk before collection moves on.
    ``random`` and ``oracle`` replies draw from a generator seeded by the episode's seed, so an episode is the
    same whichever environment plays it and whatever else runs (a resumed collection repeats nothing).
    Model replies are sampled with torch's generator, seeded with the first seed.
    """
    name = source_name(policy, source)
    seeds = list(source.seeds if seeds is None else seeds)
    if not seeds:
        return []
    if source.task is not None:
        cfg = dataclasses.replace(cfg, task=source.task)
    if source.needs_model and policy is None:
        raise ValueError(f"strategy {source.strategy!r} needs a policy; only 'random' and 'oracle' run without one.")
    if policy is not None:
        import torch

        torch.manual_seed(seeds[0])
    queue, results = list(seeds), []
    ocfg = OracleConfig(source.corrupt_rate, source.thought)
    bar = progress_bar(
        total=len(seeds),
        desc=f"{label} {cfg.task}/{source.strategy}",
        unit="episode",
        bar_format="{desc}: {n_fmt}/{total_fmt} episodes, {elapsed}{postfix}",
        disable=not progress,
        leave=False,
    )
    with EnvSlots(cfg, min(cfg.num_envs, len(seeds)), policy) as envs:
        for i in range(len(envs.envs)):
            envs.start(i, queue.pop(0))
        step = 0
        while envs.active:
            n = len(envs.active)
            step += 1
            bar.set_postfix_str(f"step {step}, {n} playing")
            for i, turns, result in envs.step([source.strategy] * n, [name] * n, ocfg):
                results.append(result)
                if buffer is not None:
                    buffer.add(turns)  # on disk before the next step
                bar.update(1)
                if queue:
                    envs.start(i, queue.pop(0))
    bar.close()
    if buffer is not None:
        buffer.flush()
    return sorted(results, key=lambda r: r.seed)


def memory_cap(task: str, n: int, free_gb: float | None = None) -> int:
    """At most `n` envs of `task`, and only as many as free memory holds at the task's ``memory_gb`` each (at
    least one); says so when it caps."""
    need = get_task(task).memory_gb
    if not need:
        return n
    free_gb = hardware.available_memory_gb() if free_gb is None else free_gb
    fits = max(1, int(free_gb // need))
    if fits < n:
        print(f"{task}: {n} envs need ~{n * need:.0f} GB and {free_gb:.1f} GB are free: running {fits} at once.")
    return min(n, fits)


def _prefix(strategy: str, env, rng: np.random.Generator) -> str:
    """What the model's reply starts with: nothing (``agent``), ``[action]`` (``min_format``) or the start of a
    random action (``partial``, from the episode's generator)."""
    if strategy == "agent":
        return ""
    if strategy == "min_format":
        return ACTION_TAG
    partial = get_task(env.unwrapped.spec.id).partial_prefix
    if partial is None:
        raise ConfigError(
            f"strategy 'partial' needs a task whose actions are calls (the MiniWoB tasks); {env.spec.id} has none."
        )
    return partial(rng)


def _replies(
    policy: Policy | None,
    cfg: CollectConfig,
    strategies: Sequence[str],
    ocfg: OracleConfig,
    slots: list[Slot],
    envs: list,
    active: list[int],
) -> list[str]:
    """One reply per active slot: random and oracle replies from the episode's generator, the model's replies
    from one batched ``generate`` (``min_format`` rows prefilled with ``[action]``)."""
    replies: list[str | None] = [None] * len(slots)
    model_rows = [k for k, strategy in enumerate(strategies) if strategy in MODEL_STRATEGIES]
    for k, (strategy, slot, i) in enumerate(zip(strategies, slots, active, strict=True)):
        if strategy == "random":
            replies[k] = envs[i].random_reply(slot.rng)
        elif strategy == "oracle":
            replies[k] = oracle_reply(envs[i], slot.rng, ocfg)
        elif strategy not in MODEL_STRATEGIES:
            raise ValueError(f"Unknown strategy {strategy!r}: use agent, min_format, random or oracle.")
    if model_rows:
        observations = [slots[k].obs for k in model_rows]
        images = [o.get("image") if (cfg.use_images and policy.is_vlm) else None for o in observations]
        prefixes = [_prefix(strategies[k], envs[active[k]], slots[k].rng) for k in model_rows]
        generated = policy.generate(
            [o["prompt"] for o in observations],
            images,
            max_new_tokens=cfg.max_reply_tokens,
            temperature=cfg.temperature,
            prefixes=prefixes,
        )
        for k, reply in zip(model_rows, generated, strict=True):
            replies[k] = reply
    return replies


def summarize(results: list[EpisodeResult], prefix: str = "eval") -> dict[str, float]:
    """Success rate (and its standard error), valid-syntax rate (valid replies / all replies), mean return and
    length, episode count."""
    if not results:
        raise ValueError("No finished episodes to summarise.")
    turns = sum(r.length for r in results)
    success = float(np.mean([r.success for r in results]))
    return {
        f"{prefix}/success": success,
        f"{prefix}/success_se": float(np.sqrt(success * (1 - success) / len(results))),
        f"{prefix}/valid": sum(r.valid_turns for r in results) / turns,
        f"{prefix}/return": float(np.mean([r.ret for r in results])),
        f"{prefix}/length": turns / len(results),
        f"{prefix}/episodes": float(len(results)),
    }


def evaluate(
    policy: Policy, cfg: CollectConfig, eval_cfg: EvalConfig | None = None, progress: bool = True
) -> dict[str, float]:
    """Evaluate the policy with the ``agent`` strategy on seeds ``eval.seed .. eval.seed + eval.episodes - 1``.
    With several processes each plays every N-th seed and the results are pooled on every process."""
    eval_cfg = eval_cfg or EvalConfig()
    source = SourceConfig("agent", eval_cfg.episodes, eval_cfg.seed)
    mine = list(source.seeds)[distributed.rank() :: distributed.world_size()]
    if eval_cfg.num_envs is not None:
        cfg = dataclasses.replace(cfg, num_envs=eval_cfg.num_envs)
    results = collect(policy, cfg, source, seeds=mine, progress=progress and distributed.is_main(), label="eval")
    pooled = sorted((r for part in distributed.gather(results) for r in part), key=lambda r: r.seed)
    return summarize(pooled, prefix="eval")


def evaluate_tasks(
    policy: Policy, cfg: CollectConfig, tasks: Sequence[str], eval_cfg: EvalConfig, progress: bool = True
) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on each task of `tasks` in turn (the same seeds on each), as ``{task: metrics}``."""
    return {task: evaluate(policy, dataclasses.replace(cfg, task=task), eval_cfg, progress) for task in tasks}


def missing_seeds(buffer: TurnBuffer, source: SourceConfig, name: str, task: str) -> list[int]:
    """The seeds of `source` with no complete episode of this source (``name``, strategy, `task` or the source's
    own) in the buffer."""
    task_id = env_id(task_name(source.task or task))
    have = {
        turns[0].seed
        for turns in buffer.episodes().values()
        if turns[0].source == name
        and turns[0].strategy == source.strategy
        and turns[0].task == task_id
        and turns[-1].done
    }
    return [s for s in source.seeds if s not in have]


def build_dataset(
    policy: Policy | None, cfg: CollectConfig, data: DataConfig, buffer: TurnBuffer, progress: bool = True
) -> dict[str, int]:
    """Top `buffer` up to every source of `data`: collect exactly the seeds not yet on disk (resumable; a killed
    run keeps every finished episode). Returns ``{source description: episodes collected now}``."""
    collected = {}
    for source in data.sources:
        name = source_name(policy, source)
        todo = missing_seeds(buffer, source, name, cfg.task)
        results = collect(policy, cfg, source, buffer=buffer, seeds=todo, progress=progress)
        collected[f"{source.task or cfg.task}: {name}/{source.strategy} seeds {source.seed}+"] = len(results)
    return collected
