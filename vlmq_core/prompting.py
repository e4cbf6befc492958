"""How base models do when only prompted (notebook 01; the paper's Figures 4 and 8): success, valid syntax and the
ways replies fail, per model, task, prompting strategy and view.

A *view* is what a model is shown of the state: ``both`` (the image and the text summary), ``image`` (the image
alone; ``collect.observation_text=false``) or ``text`` (the summary alone; ``collect.use_images=false``). VLMs are
scored in every view asked for; a text-only model sees the text whatever the view, so it is scored once, as
``text``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from vlmq_core.collect import CollectConfig, SourceConfig, collect, summarize
from vlmq_core.envs import get_task
from vlmq_core.envs.text_action import FAILURE_KINDS, failure_kind
from vlmq_core.model import Policy
from vlmq_core.turns import Turn

VIEWS = {"both": {}, "image": {"observation_text": False}, "text": {"use_images": False}}
"""Each view's ``CollectConfig`` fields."""


def views_for(policy: Policy, views: Sequence[str]) -> list[str]:
    """The views a model is scored in: those asked for (VLMs), or ``["text"]`` for a text-only model."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"Unknown view {unknown[0]!r}: use {', '.join(VIEWS)}.")
    return list(views) if policy.is_vlm else ["text"]


class _Replies:
    """Collects the turns of finished episodes in memory (what ``collect`` hands a buffer)."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []

    def add(self, turns: Sequence[Turn]) -> None:
        self.turns += turns

    def flush(self) -> None:
        pass


def score(
    policy: Policy,
    cfg: CollectConfig,
    strategy: str = "agent",
    view: str = "both",
    episodes: int = 20,
    seed: int = 10_000,
    progress: bool = True,
) -> dict[str, Any]:
    """Play `episodes` held-out episodes (seeds ``seed..``) with `strategy` (``agent`` or ``min_format``) in `view`.

    Returns :func:`vlmq_core.collect.summarize`'s metrics without the ``eval/`` prefix, plus ``turns``, the
    count of invalid replies by :data:`FAILURE_KINDS` (``failures``) and the first reply of each kind
    (``examples``).
    """
    cfg = dataclasses.replace(cfg, **VIEWS[view])
    sink = _Replies()
    results = collect(policy, cfg, SourceConfig(strategy, episodes, seed), buffer=sink, progress=progress)
    metrics = {k.removeprefix("eval/"): v for k, v in summarize(results).items()}
    actions = get_task(cfg.task).prompt.actions
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for turn in sink.turns:
        if not turn.valid:
            kind = failure_kind(turn.reply, actions)
            failures[kind] += 1
            examples.setdefault(kind, turn.reply)
    return metrics | {
        "turns": len(sink.turns),
        "failures": {k: failures[k] for k in FAILURE_KINDS if failures[k]},
        "examples": examples,
    }


def first_replies(policy: Policy, cfg: CollectConfig, episodes: int = 4, seed: int = 10_000) -> list[str]:
    """What a policy writes: the first reply (``agent`` strategy) of `episodes` held-out episodes, in seed order."""
    sink = _Replies()
    collect(policy, cfg, SourceConfig("agent", episodes, seed), buffer=sink, progress=False)
    first = {t.episode_id: (t.seed, t.reply) for t in sink.turns if t.t == 0}
    return [reply for _, reply in sorted(first.values())]


def rows(results: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """``results[model][task]["<strategy>/<view>"]`` flattened to one row per score."""
    out = []
    for model, tasks in results.items():
        for task, runs in tasks.items():
            for key, m in runs.items():
                strategy, view = key.split("/")
                out.append({"model": model, "task": task, "strategy": strategy, "view": view, **m})
    return out


def valid_syntax_bars(results: dict) -> go.Figure:
    """Valid-syntax rate per task (x), one bar per model, strategy and view; the hover gives success (with its
    standard error), turns and episodes."""
    fig = go.Figure()
    table = rows(results)
    tasks = list(dict.fromkeys(r["task"] for r in table))
    for series in dict.fromkeys((r["model"], r["strategy"], r["view"]) for r in table):
        mine = {r["task"]: r for r in table if (r["model"], r["strategy"], r["view"]) == series}
        ys = [mine[t]["valid"] if t in mine else None for t in tasks]
        hover = [
            [mine[t]["success"], mine[t]["success_se"], mine[t]["turns"], mine[t]["episodes"]] if t in mine else None
            for t in tasks
        ]
        fig.add_trace(
            go.Bar(
                x=tasks,
                y=ys,
                name=" · ".join(series),
                text=[f"{y:.0%}" if y is not None else "" for y in ys],
                textposition="outside",
                customdata=hover,
                hovertemplate="%{x}<br>valid %{y:.1%} of %{customdata[2]} replies<br>"
                "success %{customdata[0]:.0%} (SE %{customdata[1]:.0%}) of %{customdata[3]} episodes<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title="Valid action syntax of the base models, prompted (model · strategy · view)",
        yaxis={"tickformat": ".0%", "range": [0, 1.15], "title": "valid replies"},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def score_table(results: dict) -> str:
    """Markdown: one row per model, task, strategy and view: success (SE), valid syntax, return, episodes."""
    lines = [
        "| model | task | strategy · view | success | valid syntax | return | episodes | replies |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(results):
        lines.append(
            f"| {r['model']} | {r['task']} | {r['strategy']} · {r['view']} | {r['success']:.0%} "
            f"(SE {r['success_se']:.0%}) | {r['valid']:.0%} | {r['return']:.2f} | {r['episodes']:.0f} | {r['turns']} |"
        )
    return "\n".join(lines)


def failure_table(results: dict) -> str:
    """Markdown: per model, task and strategy/view, the invalid replies by kind (count and share) and an example."""
    lines = [
        "| model | task | strategy · view | kind | replies | share of invalid | example |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows(results):
        total = sum(r["failures"].values())
        for kind, n in sorted(r["failures"].items(), key=lambda kv: -kv[1]):
            example = r["examples"][kind].replace("\n", "⏎").replace("|", "\\|").replace("`", "'")
            example = example if len(example) <= 60 else example[:60] + "…"
            lines.append(
                f"| {r['model']} | {r['task']} | {r['strategy']} · {r['view']} | {kind} | {n} | {n / total:.0%} | "
                f"`{example}` |"
            )
    return "\n".join(lines)
