"""Figures from vlmq_core.plots (pure data in, plotly figures out; no display)."""

from __future__ import annotations

import base64
import math
import os

import plotly.graph_objects as go
import pytest

from vlmq_core.inspector import TokenView
from vlmq_core.plots import (
    MASK_MARK,
    eval_bars,
    learning_curves,
    metric_series,
    moving_average,
    token_heatmap,
)


def _view(tokens: list[str], adv: list[float], kept: list[bool] | None = None, title: str = "t") -> TokenView:
    kept = [a >= 0 for a in adv] if kept is None else kept
    n = len(tokens)
    return TokenView(
        tokens=tokens,
        advantage=adv,
        q_taken=[float(i) for i in range(n)],
        value=[0.5] * n,
        logp=[-1.0] * n,
        kept=kept,
        prompt=f"prompt <{title}>",
        reply="".join(tokens[:-1]),
        reward=-2.0,
        title=title,
    )


def _afsft_history(n: int = 6) -> list[dict]:
    return [
        {
            "step": s,
            "train/loss": 1.0 / (s + 1),
            "actor/nll": 2.0 - 0.1 * s,
            "actor/kept_frac": 0.5,
            "critic/loss": 0.3,
            "critic/q_taken": -1.0,
            "critic/adv_mean": 0.0,
            "train/beta": -math.inf if s < 3 else 0.0,
        }
        for s in range(n)
    ]


def _sft_history(n: int = 6) -> list[dict]:
    # the SFT path logs no critic keys
    return [
        {"step": s, "train/loss": 2.0 - 0.1 * s, "actor/nll": 2.0 - 0.1 * s, "train/beta": -math.inf} for s in range(n)
    ]


def _traces_by_subplot(fig: go.Figure) -> dict[str, list[go.Scatter]]:
    titles = {f"x{'' if i == 0 else i + 1}": a.text for i, a in enumerate(fig.layout.annotations)}
    out: dict[str, list[go.Scatter]] = {}
    for tr in fig.data:
        out.setdefault(titles[tr.xaxis], []).append(tr)
    return out


## learning curves ##


def test_learning_curves_default_keys_runs_and_colours():
    fig = learning_curves({"sft": _sft_history(), "afsft": _afsft_history()})
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["train/loss", "actor/nll", "actor/kept_frac", "critic/loss", "critic/q_taken", "critic/adv_mean"]
    by = _traces_by_subplot(fig)
    assert [t.name for t in by["train/loss"]] == ["sft", "afsft"]
    assert [t.name for t in by["actor/nll"]] == ["sft", "afsft"]
    assert [t.name for t in by["critic/loss"]] == ["afsft"]  # missing keys tolerated
    colours = {}
    for tr in fig.data:
        colours.setdefault(tr.name, set()).add(tr.line.color)
    assert all(len(c) == 1 for c in colours.values()) and colours["sft"] != colours["afsft"]
    assert sorted(tr.name for tr in fig.data if tr.showlegend) == ["afsft", "sft"]


def test_learning_curves_skips_non_finite_beta_and_smooths():
    fig = learning_curves({"afsft": _afsft_history()}, keys=["train/beta", "train/loss", "no/such_key"])
    by = _traces_by_subplot(fig)
    beta = by["train/beta"][0]
    assert list(beta.x) == [3, 4, 5] and list(beta.y) == [0.0, 0.0, 0.0]
    assert "no/such_key" not in by and len(fig.layout.annotations) == 3
    smooth = learning_curves({"afsft": _afsft_history()}, keys=["actor/nll"], smooth=2)
    assert list(smooth.data[0].y) == pytest.approx([2.0, 1.95, 1.85, 1.75, 1.65, 1.55])
    assert moving_average([1, 2, 3, 4], 3) == pytest.approx([1, 1.5, 2, 3])
    assert metric_series([{"step": 0, "x": float("nan")}, {"step": 1, "x": 1}], "x") == ([1], [1.0])


def test_learning_curves_no_metrics_is_empty_figure():
    fig = learning_curves({"sft": [{"step": 0}]})
    assert len(fig.data) == 0


## eval bars ##


def test_eval_bars_grouped_with_percent_labels_and_episodes():
    results = {
        "base": {"eval/success": 0.0, "eval/success_se": 0.0, "eval/valid": 0.25, "eval/episodes": 16},
        "sft": {"eval/success": 0.5, "eval/success_se": 0.125, "eval/valid": 0.9, "eval/episodes": 16},
        "afsft": {"eval/success": 0.75, "eval/episodes": 8},  # eval/valid and the SE missing
    }
    fig = eval_bars(results)
    assert fig.layout.barmode == "group" and len(fig.data) == 2
    success, valid = fig.data
    assert list(success.x) == ["base (16 ep.)", "sft (16 ep.)", "afsft (8 ep.)"]
    assert list(success.error_y.array) == [0.0, 0.125, None] and success.error_y.visible
    assert not valid.error_y.visible  # no eval/valid_se anywhere
    assert list(success.text) == ["0%", "50%", "75%"]
    assert list(valid.y) == [0.25, 0.9, None] and list(valid.text) == ["25%", "90%", ""]
    assert list(success.customdata) == [16, 16, 8] and "episodes" in success.hovertemplate


## token views ##


def test_token_heatmap_hover_shows_the_td_target_when_the_view_has_one():
    view = _view(["[action]", " +", "<end>"], [0.3, -0.2, 0.1])
    assert [row[5] for row in token_heatmap([view]).data[0].customdata[0]] == ["", "", ""]
    view.td_target = [-1.0, -2.5, 0.25]
    fig = token_heatmap([view])
    assert [row[5] for row in fig.data[0].customdata[0]] == ["<br>y -1.000", "<br>y -2.500", "<br>y 0.250"]
    assert "%{customdata[5]}" in fig.data[0].hovertemplate
    assert fig.data[0].colorbar.title.text == f"A = {view.advantage_name}"
    with pytest.raises(ValueError, match="td_target"):
        TokenView(["a"], [0.0], [0.0], [0.0], [0.0], [True], "p", "r", 0.0, td_target=[1.0, 2.0])


def test_tokenview_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        TokenView(["a", "b"], [0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [True, True], "p", "r", 0.0)


def test_token_heatmap_dimensions_and_masked_marks():
    views = [
        _view(["a", "b", "<end>"], [0.1, -0.1, 0.2], title="same"),
        _view(["x", "<end>"], [-0.5, 0.5], title="same"),
    ]
    fig = token_heatmap(views)
    (hm,) = fig.data
    assert len(hm.z) == 2 and all(len(r) == 3 for r in hm.z)
    assert list(hm.z[1]) == [-0.5, 0.5, None]
    assert list(hm.text[0]) == ["a", MASK_MARK + "b", "<end>"]
    assert list(hm.text[1]) == [MASK_MARK + "x", "<end>", ""]
    assert len(set(hm.y)) == 2  # rows with equal titles stay distinct
    assert hm.zmid == 0.0


def test_setup_figures_saves_plotly_json_and_a_png_and_no_plotly_js(monkeypatch, capsys):
    """Each figure is one output with plotly's JSON (JupyterLab) and a PNG (every viewer without JavaScript),
    never plotly.js; without a static renderer the notebook still runs and says why, once."""
    import shutil

    import plotly.io as pio

    from vlmq_core import render

    before = pio.renderers.default
    fig = go.Figure(go.Scatter(x=[1, 2], y=[2, 1]))
    try:
        on = render.setup_figures()
        bundle = pio.renderers._build_mime_bundle(fig.to_dict())
        assert "text/html" not in bundle and "application/vnd.plotly.v1+json" in bundle
        if shutil.which("chromium") or os.environ.get("BROWSER_PATH"):  # the set-up installs Debian's Chromium
            assert on and base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
        monkeypatch.setattr(render, "_state", {})
        monkeypatch.setattr(render, "_start_kaleido", lambda: "kaleido is not installed")
        assert render.setup_figures() is False and render.setup_figures() is False
        out = capsys.readouterr().out
        assert out.count("Figures will carry no static picture: kaleido is not installed.") == 1
        assert set(pio.renderers._build_mime_bundle(fig.to_dict())) == {"application/vnd.plotly.v1+json"}
    finally:
        pio.renderers.default = before


def test_marks_label_the_first_subplot_only_and_single_points_show_as_markers():
    history = [{"step": s, "train/loss": 1.0, "eval/success": 0.5 if s == 4 else math.nan} for s in range(1, 6)]
    fig = learning_curves({"run": history}, ["train/loss", "eval/success"], marks={"filter on": 2})
    texts = [a.text for a in fig.layout.annotations]
    assert texts.count("filter on") == 1 and "new text" not in texts and None not in texts
    (point,) = [t for t in fig.data if list(t.x) == [4]]
    assert "markers" in point.mode  # one evaluation: a dot, not an invisible line


def test_per_task_figures_wrap_after_four_tasks():
    from vlmq_core.plots import dataset_quality, return_distributions

    row = {"source": "random", "success": 0.5, "success_se": 0.1, "valid": 1.0, "episodes": 4, "return": 0.0}
    tasks = [f"task-{i}" for i in range(8)]
    fig = dataset_quality({t: [row] for t in tasks})
    assert fig.layout.width <= 1100 and len(fig.data) == 16
    assert [a.text for a in fig.layout.annotations if a.text] == tasks
    assert len({(t.xaxis, t.yaxis) for t in fig.data}) == 16  # every task and row in a subplot of its own
    fig = return_distributions({t: {"random": [0.0, 1.0]} for t in tasks})
    assert fig.layout.width <= 1100 and len({t.xaxis for t in fig.data}) == 8


def test_q_histogram_bins_each_group_into_shares():
    import torch

    from vlmq_core.plots import q_histogram

    q = torch.cat([torch.full((10,), -1.0), torch.full((990,), 2.0)])
    seen = torch.zeros(1000, dtype=torch.bool)
    seen[:10] = True
    fig = q_histogram(q, seen, taken=0, bins=3)
    used, rest = fig.data
    assert used.name == "tokens the data uses (10)" and rest.name == "tokens it never uses (990)"
    assert used.y == (1.0, 0.0, 0.0) and rest.y == (0.0, 0.0, 1.0) and len(fig.to_json()) < 10_000


def test_learning_curves_mark_where_the_filter_switches_on():
    fig = learning_curves({"afsft": _afsft_history()}, keys=["train/loss", "actor/nll"], marks={"filter on": 2})
    lines = [shape for shape in fig.layout.shapes if shape.type == "line"]
    assert len(lines) == 2 and all(line.x0 == line.x1 == 2 for line in lines)  # one per subplot
    assert [a.text for a in fig.layout.annotations if a.text == "filter on"] == ["filter on"]  # labelled once
