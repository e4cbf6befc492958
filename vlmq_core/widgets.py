"""Small ipywidgets around :mod:`vlmq_core.plots` for browsing the critic's view of replies in a notebook."""

from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go

from vlmq_core.inspector import TokenView
from vlmq_core.plots import token_advantages


def _figure_widget(fig: go.Figure) -> go.FigureWidget | None:
    """A live ``FigureWidget`` when plotly's widget backend (anywidget) is installed, else None."""
    try:
        return go.FigureWidget(fig)
    except ImportError:
        return None


def _text_html(view: TokenView) -> str:
    return (
        f"<b>prompt</b><pre style='white-space:pre-wrap;max-height:16em;overflow:auto'>{html.escape(view.prompt)}</pre>"
        f"<b>reply</b> (reward {view.reward:+g})<pre style='white-space:pre-wrap'>{html.escape(view.reply)}</pre>"
    )


class TokenBrowser(widgets.VBox):
    """Dropdown over turns; below it the turn's :func:`~vlmq_core.plots.token_advantages` and its prompt/reply.

    Attributes: ``selector`` (the dropdown, value = turn index), ``plot`` (a ``FigureWidget``, or an
    ``Output`` when anywidget is missing), ``text`` (an ``HTML`` with prompt and reply) and ``figure``
    (the figure currently shown: the ``FigureWidget`` itself or a plain ``go.Figure``).
    """

    def __init__(self, views: list[TokenView], beta: float = 0.0) -> None:
        if not views:
            raise ValueError("token_browser needs at least one TokenView")
        self.views = list(views)
        self.beta = beta
        options = [(f"{i}: {v.title or 'turn'} (r={v.reward:+g})", i) for i, v in enumerate(self.views)]
        self.selector = widgets.Dropdown(options=options, value=0, description="turn")
        self.text = widgets.HTML()
        first = token_advantages(self.views[0], beta)
        live = _figure_widget(first)
        self.figure: go.Figure = live if live is not None else first
        self.plot: widgets.Widget = live if live is not None else widgets.Output()
        self._render(0)
        self.selector.observe(self._on_select, names="value")
        super().__init__([self.selector, self.plot, self.text])

    def _on_select(self, change: dict) -> None:
        self._render(int(change["new"]))

    def _render(self, idx: int) -> None:
        view = self.views[idx]
        fig = token_advantages(view, self.beta)
        self.text.value = _text_html(view)
        if isinstance(self.figure, go.FigureWidget):
            with self.figure.batch_update():
                self.figure.data[0].update(fig.data[0].to_plotly_json())
                self.figure.layout = fig.layout
            return
        self.figure = fig
        out = self.plot
        assert isinstance(out, widgets.Output)
        out.clear_output(wait=True)
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - ipywidgets depends on IPython
            return
        if get_ipython() is not None:  # only a kernel can render; elsewhere keep the figure in ``self.figure``
            with out:
                display(fig)


def token_browser(views: list[TokenView], beta: float = 0.0) -> TokenBrowser:
    """A widget to pick a turn among ``views`` and see its per-token advantages, prompt and reply."""
    return TokenBrowser(views, beta)
