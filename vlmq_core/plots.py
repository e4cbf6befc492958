"""Plotly figures for the workbench: learning curves, eval bars and per-token critic views.

Every function here is pure: it takes plain data (metric dicts, :class:`TokenView`) and returns a
``plotly.graph_objects.Figure``; nothing is shown or written. Notebooks display the figures, tests inspect them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    import torch

    from vlmq_core.inspector import TokenView


SPARSE_POINTS = 30
"""A series with at most this many points is drawn with markers too (an online run's few evaluations; a single
point drawn as a line alone is invisible)."""

TASKS_PER_ROW = 4
"""Per-task figures wrap after this many tasks, so eight tasks fit a notebook's width in two rows."""


#: Metrics ``learning_curves`` shows by default (those present in at least one run).
ONLINE_CURVE_KEYS: tuple[str, ...] = (
    "eval/success",
    "eval/valid",
    "eval/return",
    "online/success",
    "online/agent_valid",
    "online/return",
    "online/epsilon",
    "actor/kept_frac",
    "buffer/turns",
)
"""An online run's curves (one row per epoch): held-out evaluations, the agent's own play, exploration, the filter."""

DEFAULT_CURVE_KEYS: tuple[str, ...] = (
    "train/loss",
    "actor/nll",
    "actor/kept_frac",
    "critic/loss",
    "critic/q_taken",
    "critic/adv_mean",
)
RUN_COLORS: tuple[str, ...] = tuple(qualitative.Plotly)
MASK_MARK = "×"


## Helpers ##


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def metric_series(history: Iterable[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x values, values) of ``key`` over a run, skipping rows where it is missing or non-finite; `x` is the row
    key along the x axis (``step``; ``online/env_steps`` or ``online/updates`` for online runs)."""
    xs, ys = [], []
    for i, row in enumerate(history):
        v = row.get(key)
        if _finite(v):
            xs.append(row.get(x, i))
            ys.append(float(v))
    return xs, ys


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` points (shorter at the start), same length as ``values``."""
    if window <= 1:
        return [float(v) for v in values]
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def visible_token(token: str) -> str:
    """The token with spaces, newlines and tabs made visible (and the empty string shown as "∅")."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


## Training ##


def learning_curves(
    histories: dict[str, list[dict]],
    keys: Sequence[str] | None = None,
    smooth: int = 1,
    x: str = "step",
    title: str = "Learning curves",
    marks: dict[str, float] | None = None,
) -> go.Figure:
    """One subplot per metric, one line per run (same colour in every subplot, one legend entry per run).

    ``histories`` maps a run name ("sft", "afsft") to its per-step metric dicts. ``keys`` defaults to the
    :data:`DEFAULT_CURVE_KEYS` some run logged; explicitly requested keys no run logged give an empty subplot.
    Non-finite values (e.g. ``train/beta = -inf`` before the filter starts) are skipped. ``smooth`` > 1
    applies a trailing moving average of that many points. ``x`` is the row key along the x axis (online runs:
    ``online/env_steps`` or ``online/updates``, one row per epoch). ``marks`` draws a labelled vertical line at each
    x in every subplot, e.g. ``{"filter on": cfg.loss.filter_start_step}`` (where AFSFT stops being SFT).
    """
    if keys is None:
        keys = [k for k in DEFAULT_CURVE_KEYS if any(metric_series(h, k, x)[0] for h in histories.values())]
    if not keys:
        fig = go.Figure()
        fig.add_annotation(text="no metrics logged", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig
    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(keys), horizontal_spacing=0.08)
    shown: set[str] = set()
    for k_idx, key in enumerate(keys):
        row, col = divmod(k_idx, cols)
        for r_idx, (run, history) in enumerate(histories.items()):
            xs, ys = metric_series(history, key, x)
            if not xs:
                continue
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=moving_average(ys, smooth),
                    mode="lines+markers" if len(xs) <= SPARSE_POINTS else "lines",  # one evaluation is a dot
                    name=run,
                    legendgroup=run,
                    showlegend=run not in shown,
                    line={"color": RUN_COLORS[r_idx % len(RUN_COLORS)]},
                    hovertemplate=f"{run}<br>{x} %{{x}}<br>{key} %{{y:.4g}}<extra></extra>",
                ),
                row=row + 1,
                col=col + 1,
            )
            shown.add(run)
    for i in range(len(keys)):
        fig.update_xaxes(title_text=x, row=i // cols + 1, col=i % cols + 1)
        for label, at in (marks or {}).items():
            label_once = {"annotation_text": label} if i == 0 else {}  # (None would draw plotly's "new text")
            fig.add_vline(
                x=at, line_dash="dot", line_color="grey", row=i // cols + 1, col=i % cols + 1, **label_once
            )  # fmt: skip
    title = title + (f" (moving average {smooth})" if smooth > 1 else "")
    fig.update_layout(title=title, height=280 * rows + 80, template="plotly_white")
    return fig


## Evaluation ##


def eval_bars(results: dict[str, dict], keys: Sequence[str] = ("eval/success", "eval/valid")) -> go.Figure:
    """Grouped bars: runs ("base", "sft", "afsft") along x, one bar per metric, values in 0..1 shown as percent.

    A run missing a metric gets no bar for it. A metric with a standard error (``<key>_se``, e.g.
    ``eval/success_se``) gets it as an error bar; the x labels and the hover give ``eval/episodes``.
    """
    runs = list(results)
    episodes = [results[r].get("eval/episodes") for r in runs]
    labels = [f"{r} ({int(n)} ep.)" if _finite(n) else r for r, n in zip(runs, episodes, strict=True)]
    fig = go.Figure()
    for key in keys:
        ys = [float(results[r][key]) if _finite(results[r].get(key)) else None for r in runs]
        ses = [float(results[r][key + "_se"]) if _finite(results[r].get(key + "_se")) else None for r in runs]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=ys,
                name=key.removeprefix("eval/"),
                text=[f"{y:.0%}" if y is not None else "" for y in ys],
                textposition="outside",
                error_y={"type": "data", "array": ses, "visible": any(s is not None for s in ses)},
                customdata=[n if n is not None else "?" for n in episodes],
                hovertemplate=f"%{{x}}<br>{key} %{{y:.1%}}<br>episodes %{{customdata}}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title="Evaluation",
        yaxis={"tickformat": ".0%", "range": [0, 1.1]},
        template="plotly_white",
    )
    return fig


def task_bars(results: dict[str, dict[str, dict]], key: str = "eval/success") -> go.Figure:
    """Per task (x), one bar per run (``{run: {task: evaluate metrics}}``) of `key` with its standard error where
    there is one; the hover gives the episodes."""
    fig = go.Figure()
    for i, (run, by_task) in enumerate(results.items()):
        tasks = list(by_task)
        ys = [float(by_task[t][key]) for t in tasks]
        ses = [float(by_task[t][key + "_se"]) if _finite(by_task[t].get(key + "_se")) else None for t in tasks]
        episodes = [int(by_task[t].get("eval/episodes", 0)) for t in tasks]
        fig.add_trace(
            go.Bar(
                x=tasks,
                y=ys,
                name=run,
                marker_color=RUN_COLORS[i % len(RUN_COLORS)],
                error_y={"type": "data", "array": ses, "visible": any(s is not None for s in ses)},
                customdata=episodes,
                hovertemplate=f"{run} · %{{x}}<br>{key} %{{y:.0%}}<br>episodes %{{customdata}}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title=f"{key.removeprefix('eval/')} per task",
        yaxis={"tickformat": ".0%", "range": [0, 1.1]},
        template="plotly_white",
    )
    return fig


def reading_bars(scores: dict[str, dict[str, dict[str, dict]]], way: str = "read") -> go.Figure:
    """Reading accuracy (:func:`vlmq_core.sight.reading_accuracy`) of each reader (``{reader: {task: {"read/field":
    {acc, se, majority}}}}``) per task and field, with its standard error; a grey tick marks the majority rate
    (always giving the commonest true value). `way`: ``read`` (fields of the transcription) or ``asked``."""
    fig = go.Figure()
    first = next(iter(scores.values()), {})
    labels = [(task, key) for task, row in first.items() for key in row if key.startswith(way + "/")]
    xs = [f"{task.removeprefix('BabyAI-')} · {key.split('/', 1)[1]}" for task, key in labels]
    for i, (reader, by_task) in enumerate(scores.items()):
        cells = [by_task.get(task, {}).get(key, {}) for task, key in labels]
        fig.add_trace(
            go.Bar(
                x=xs,
                y=[c.get("acc") for c in cells],
                name=reader,
                marker_color=RUN_COLORS[i % len(RUN_COLORS)],
                error_y={"type": "data", "array": [c.get("se") for c in cells]},
                customdata=[c.get("n") for c in cells],
                hovertemplate=f"{reader} · %{{x}}<br>exact %{{y:.0%}} of %{{customdata}}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[first[task][key].get("majority") for task, key in labels],
            mode="markers",
            name="majority answer",
            marker={"symbol": "line-ew-open", "size": 18, "color": "grey", "line": {"width": 3}},
            hovertemplate="always the commonest answer: %{y:.0%}<extra></extra>",
        )
    )
    fig.update_layout(
        barmode="group",
        title=f"Reading accuracy ({'fields of the transcription' if way == 'read' else 'one question per field'})",
        yaxis={"tickformat": ".0%", "range": [0, 1.05]},
        xaxis={"tickangle": -40},
        template="plotly_white",
        height=420,
    )
    return fig


## Per-token critic ##


def _hover_rows(view: TokenView) -> list[list[object]]:
    """Per token: [repr, Q, V, log pi, "kept"/"masked", "<br>y ..." or ""] for the hover templates."""
    ys = view.td_target if view.td_target is not None else [None] * len(view.tokens)
    return [
        [html.escape(repr(t)), q, v, lp, "kept" if k else "masked", "" if y is None else f"<br>y {y:.3f}"]
        for t, q, v, lp, k, y in zip(view.tokens, view.q_taken, view.value, view.logp, view.kept, ys, strict=True)
    ]


def token_heatmap(views: list[TokenView]) -> go.Figure:
    """Replies as rows, tokens as cells coloured by advantage (diverging, centred at 0).

    Cell text is the token; tokens the filter masks are prefixed with ``"×"``. Rows are padded with
    empty cells to the longest reply.
    """
    width = max((len(v.tokens) for v in views), default=0)
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    custom: list[list[list[object]]] = []
    for v in views:
        pad = width - len(v.tokens)
        z.append([float(a) for a in v.advantage] + [None] * pad)
        marked = [("" if k else MASK_MARK) + visible_token(t) for t, k in zip(v.tokens, v.kept, strict=True)]
        text.append(marked + [""] * pad)
        custom.append(_hover_rows(v) + [["", None, None, None, "", ""]] * pad)
    rows = [f"{i}: {v.title or 'turn'} (r={v.reward:+g})" for i, v in enumerate(views)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(width)),
            y=rows,
            text=text,
            texttemplate="%{text}",
            customdata=custom,
            colorscale="RdBu",
            zmid=0.0,
            xgap=1,
            ygap=1,
            colorbar={"title": "A" if not views else f"A = {views[0].advantage_name}"},
            hoverongaps=False,
            hovertemplate=(
                "token %{customdata[0]} (%{customdata[4]})<br>A %{z:.3f}<br>Q %{customdata[1]:.3f}"
                "<br>V %{customdata[2]:.3f}<br>log pi %{customdata[3]:.3f}%{customdata[5]}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=f"Advantage per reply token, PopArt-normalised ({MASK_MARK} = masked by the filter)",
        xaxis={"title": "reply token index"},
        yaxis={"autorange": "reversed", "type": "category"},
        height=max(250, 40 * len(views) + 150),
        template="plotly_white",
    )
    return fig


def q_histogram(
    q: torch.Tensor, seen: torch.Tensor, taken: int | None = None, title: str = "", bins: int = 60
) -> go.Figure:
    """Histograms of one position's Q-values (V,): the tokens the data uses vs all the others (shares of each
    group per bin, binned here so the figure stays small), with the taken token marked; a max-Q actor moves its
    mass towards the right end, wherever that is."""
    import numpy as np

    values = q.float().cpu().numpy()
    edges = np.histogram_bin_edges(values, bins=bins)
    centers, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0]) if len(edges) > 1 else 1.0
    fig = go.Figure()
    mask = seen.cpu().numpy()
    for group, name in ((mask, "tokens the data uses"), (~mask, "tokens it never uses")):
        counts, _ = np.histogram(values[group], bins=edges)
        share = counts / max(1, counts.sum())
        fig.add_trace(
            go.Bar(
                x=centers.tolist(),
                y=share.tolist(),
                width=width,
                name=f"{name} ({int(group.sum())})",
                opacity=0.7,
                hovertemplate="Q %{x:.3g}<br>share %{y:.2%}<extra></extra>",
            )
        )
    if taken is not None:
        fig.add_vline(x=float(values[taken]), line_dash="dash", annotation_text="taken token")
    fig.update_layout(
        barmode="overlay",
        title=title or "Q over the vocabulary at one action token",
        xaxis_title="Q (unnormalised return)",
        yaxis_title="share of the group's tokens",
        template="plotly_white",
    )
    return fig


## Datasets ##


def _source_label(source: str) -> str:
    """A short axis label: ``<model>/<strategy>`` becomes ``model: <strategy>`` (the hover keeps the full name)."""
    return f"model: {source.rsplit('/', 1)[1]}" if "/" in source else source


def dataset_quality(tables: dict[str, list[dict]], limits: dict[str, float | None] | None = None) -> go.Figure:
    """Per task (columns), each source's success rate with its standard error (top) and valid-reply share
    (bottom), from :func:`vlmq_core.survey.source_quality` rows; a dashed line marks the task's limit (the best
    success any policy reaches) where `limits` has one. The ``all`` row is the dataset as a whole."""
    tasks = list(tables)
    cols, blocks = min(max(1, len(tasks)), TASKS_PER_ROW), max(1, math.ceil(len(tasks) / TASKS_PER_ROW))
    titles = []
    for b in range(blocks):  # a block is a success row (titled) over a valid row, TASKS_PER_ROW tasks wide
        names = tasks[b * cols : (b + 1) * cols]
        titles += names + [""] * (cols - len(names)) + [""] * cols
    fig = make_subplots(
        rows=2 * blocks, cols=cols, shared_yaxes=True, subplot_titles=titles, vertical_spacing=0.12 / blocks
    )
    for i, task in enumerate(tasks):
        top, c = 2 * (i // cols) + 1, i % cols + 1
        rows = tables[task]
        names = [_source_label(r["source"]) for r in rows]
        colours = ["#7f7f7f" if n == "all" else RUN_COLORS[i % len(RUN_COLORS)] for i, n in enumerate(names)]
        fig.add_trace(
            go.Bar(
                x=names,
                y=[r["success"] for r in rows],
                error_y={"type": "data", "array": [r["success_se"] for r in rows]},
                marker_color=colours,
                customdata=[[r["episodes"], r["return"], r["source"]] for r in rows],
                hovertemplate="%{customdata[2]}<br>success %{y:.1%}<br>episodes %{customdata[0]}<br>mean return "
                "%{customdata[1]:.2f}<extra></extra>",
                showlegend=False,
            ),
            row=top,
            col=c,
        )
        fig.add_trace(
            go.Bar(
                x=names,
                y=[r["valid"] for r in rows],
                marker_color=colours,
                opacity=0.6,
                customdata=[r["source"] for r in rows],
                hovertemplate="%{customdata}<br>valid replies %{y:.1%}<extra></extra>",
                showlegend=False,
            ),
            row=top + 1,
            col=c,
        )
        limit = (limits or {}).get(task)
        if limit is not None:
            fig.add_hline(
                y=limit, line_dash="dash", line_color="black", row=top, col=c, annotation_text=f"limit {limit:.1%}"
            )
    fig.update_yaxes(tickformat=".0%", range=[0, 1.1])
    for b in range(blocks):
        fig.update_xaxes(showticklabels=False, row=2 * b + 1)  # the valid row below names the sources
        fig.update_yaxes(title_text="success", row=2 * b + 1, col=1)
        fig.update_yaxes(title_text="valid replies", row=2 * b + 2, col=1)
    fig.update_layout(
        title="Dataset quality by source", template="plotly_white", height=80 + 540 * blocks, width=max(700, 260 * cols)
    )
    return fig


def return_distributions(returns: dict[str, dict[str, list[float]]]) -> go.Figure:
    """Per task (columns), a box of episode returns per source (every episode a point), from
    :func:`vlmq_core.survey.returns_by_source`."""
    tasks = list(returns)
    cols, rows = min(max(1, len(tasks)), TASKS_PER_ROW), max(1, math.ceil(len(tasks) / TASKS_PER_ROW))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=tasks)
    for t, task in enumerate(tasks):
        r, c = t // cols + 1, t % cols + 1
        for i, (source, values) in enumerate(returns[task].items()):
            fig.add_trace(
                go.Box(
                    y=values,
                    name=_source_label(source),
                    boxpoints="all",
                    jitter=0.4,
                    pointpos=0,
                    marker={"size": 3, "color": RUN_COLORS[i % len(RUN_COLORS)]},
                    showlegend=False,
                ),
                row=r,
                col=c,
            )
    for r in range(1, rows + 1):
        fig.update_yaxes(title_text="episode return", row=r, col=1)
    fig.update_layout(
        title="Episode returns by source", template="plotly_white", height=60 + 360 * rows, width=max(700, 260 * cols)
    )
    return fig
