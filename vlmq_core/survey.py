"""What a dataset holds and how good it is (notebook 02): its episodes split by source, each source's success,
return and valid share with standard errors, against the best success any policy can reach on the task.

A *source* is what wrote the replies: ``random`` (valid actions as text), ``oracle@<corrupt rate>`` (the task's
oracle, each action replaced by a random valid one at that rate) or a model's name with its strategy (``agent``,
``min_format``). :func:`survey_config` builds the config of a dataset with given sources for any task, so the same
``vlmq collect`` machinery (resumable, atomic shards) builds it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vlmq_core import config
from vlmq_core.buffer import TurnBuffer
from vlmq_core.envs import env_id, task_name
from vlmq_core.envs.limits import task_limits
from vlmq_core.run import RunConfig, load_config
from vlmq_core.turns import Turn


def survey_config(
    task: str, path: str, sources: Sequence[Mapping[str, Any]], overrides: Iterable[str] = ()
) -> RunConfig:
    """The config of one dataset: the defaults with this `task`, folder `path` and `sources` (mappings of
    :class:`~vlmq_core.collect.SourceConfig` fields), then `overrides` as on the command line (``model.name=...``,
    ``data.sources.0.episodes=4``)."""
    cfg = load_config(None, {"collect.task": task, "data.path": path, "data.sources": [dict(s) for s in sources]})
    return config.apply_overrides(cfg, list(overrides))


def source_of(turn: Turn) -> str:
    """A turn's source as the tables name it: ``random``, ``oracle@0.25`` or ``<model>/<strategy>``."""
    if turn.strategy in ("random", "oracle"):
        return turn.source
    return f"{turn.source}/{turn.strategy}"


def _mean_se(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def source_quality(buffer: TurnBuffer, task: str | None = None) -> list[dict[str, Any]]:
    """One row per source (order of first appearance) over its complete episodes: ``episodes``, ``turns``,
    ``success`` (the last reward > 0, as everywhere in vlmq) and ``success_se``, ``return`` and ``return_se`` (mean
    undiscounted episode return), ``valid`` (share of replies that parse to an action), ``length`` (turns per
    episode); then one ``all`` row over every episode. With `task`, only that task's episodes (a dataset over
    several tasks)."""
    by_source: dict[str, list[list[Turn]]] = {}
    episodes = buffer.complete_episodes()
    if task is not None:
        episodes = [turns for turns in episodes if turns[0].task == env_id(task_name(task))]
    for turns in episodes:
        by_source.setdefault(source_of(turns[0]), []).append(turns)
    rows = [_quality(name, eps) for name, eps in by_source.items()]
    if episodes:
        rows.append(_quality("all", episodes))
    return rows


def _quality(name: str, episodes: list[list[Turn]]) -> dict[str, Any]:
    wins = [float(turns[-1].reward > 0) for turns in episodes]
    returns = [sum(turn.reward for turn in turns) for turns in episodes]
    replies = [turn.valid for turns in episodes for turn in turns]
    success = sum(wins) / len(wins)
    ret, ret_se = _mean_se(returns)
    return {
        "source": name,
        "episodes": len(episodes),
        "turns": len(replies),
        "success": success,
        "success_se": math.sqrt(success * (1 - success) / len(wins)),
        "return": ret,
        "return_se": ret_se,
        "valid": sum(replies) / len(replies),
        "length": len(replies) / len(episodes),
    }


def returns_by_source(buffer: TurnBuffer) -> dict[str, list[float]]:
    """Each source's episode returns (complete episodes), for the return distributions."""
    out: dict[str, list[float]] = {}
    for turns in buffer.complete_episodes():
        out.setdefault(source_of(turns[0]), []).append(sum(turn.reward for turn in turns))
    return out


def task_limit(task: str) -> float | None:
    """The best success rate any policy reaches on `task` (``envs/limits.py``), None where none is computed
    (BabyAI: its levels are solvable, but within the 64-step limit not always; PAPER_MAP.md)."""
    return task_limits().get(task)


def quality_table(tables: Mapping[str, list[dict[str, Any]]]) -> str:
    """A markdown table of :func:`source_quality` rows for several tasks, each task's limit beside it."""
    lines = [
        "| task (limit) | source | episodes | success | return | valid replies | turns/episode |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, rows in tables.items():
        limit = task_limit(task)
        name = f"{task} ({limit:.1%})" if limit is not None else f"{task} (–)"
        for r in rows:
            lines.append(
                f"| {name} | {r['source']} | {r['episodes']} | {r['success']:.0%} ± {r['success_se']:.0%} | "
                f"{r['return']:+.2f} ± {r['return_se']:.2f} | {r['valid']:.0%} | {r['length']:.1f} |"
            )
            name = ""
    return "\n".join(lines)


def task_table(data: Mapping[str, Mapping[str, Any]], results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """The paper's appendix tables (success, then valid syntax, per task) in one markdown table: per task, the
    dataset's success and valid share (`data`: task -> the ``all`` row of :func:`source_quality`), then each run's
    (`results`: run -> task -> :func:`~vlmq_core.collect.evaluate` metrics), success with its standard error, and
    a mean row over the tasks."""
    runs = list(results)
    head = "| task | data: success | data: valid | " + " | ".join(f"{r}: success | {r}: valid" for r in runs) + " |"
    lines = [head, "|---" * (3 + 2 * len(runs)) + "|"]
    tasks = list(data)
    for task in tasks:
        d = data[task]
        cells = [f"{d['success']:.0%}", f"{d['valid']:.0%}"]
        for r in runs:
            m = results[r][task]
            cells += [f"{m['eval/success']:.0%} ± {m['eval/success_se']:.0%}", f"{m['eval/valid']:.0%}"]
        lines.append(
            f"| {task} ({d['episodes']} ep. / {int(results[runs[0]][task]['eval/episodes'])} eval.) | "
            + " | ".join(cells)
            + " |"
        )

    def mean(values: Iterable[float]) -> str:
        values = list(values)
        return f"{sum(values) / len(values):.0%}"

    cells = [mean(data[t]["success"] for t in tasks), mean(data[t]["valid"] for t in tasks)]
    for r in runs:
        cells += [mean(results[r][t]["eval/success"] for t in tasks), mean(results[r][t]["eval/valid"] for t in tasks)]
    lines.append(f"| mean of {len(tasks)} tasks | " + " | ".join(cells) + " |")
    return "\n".join(lines)
