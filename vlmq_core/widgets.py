"""The token inspector: why the critic keeps or masks each reply token, as HTML and as an ipywidgets browser.

:func:`inspect` is what a notebook calls on :func:`vlmq_core.inspector.token_views`: in JupyterLab it returns a
:class:`TokenInspector` (filters, sorting, a live ``beta`` slider, top-k alternatives per position, the episode
around each turn); where no one can use controls (papermill, ``nbconvert --execute``, a script) it returns a
:class:`StaticInspector`, plain HTML of a few turns that any notebook viewer shows without a kernel or JavaScript.
:func:`browse_samples` does the same for a dataset's turns (notebook 02). The ``*_html`` functions are pure: views
or turns in, an HTML string out.
"""

from __future__ import annotations

import base64
import html
import math

import ipywidgets as widgets

from vlmq_core.inspector import FILTER_GROUPS, TokenView, group_kept
from vlmq_core.plots import visible_token
from vlmq_core.turns import Turn

KEPT_RGB = (44, 160, 44)  # green: A >= beta, the actor imitates the token
MASKED_RGB = (214, 39, 40)  # red: A < beta, masked out of the actor loss
CELL = "padding:1px 8px;text-align:left"
MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"
SORTS = {
    "dataset order": None,
    "reward, low first": lambda v: v.reward,
    "reward, high first": lambda v: -v.reward,
    "kept fraction, low first": "kept",
    "lowest advantage first": lambda v: min(v.advantage, default=0.0),
    "return-to-go, low first": lambda v: v.return_to_go if v.return_to_go is not None else math.inf,
}
"""How the inspector can order turns (``"kept"`` depends on beta, so the widget computes it)."""


## Pure HTML ##


def _tok(token: str) -> str:
    return html.escape(visible_token(token))


def units_html(view: TokenView) -> str:
    """The legend, stated once per rendering: which advantage, in which units, and what the colours mean."""
    return (
        f"<div style='font-size:12px;color:#444;margin:4px 0'><b>A = {html.escape(view.advantage_name)}</b>, the "
        "advantage the run's filter reads, in PopArt-normalised units (the units β is compared with); "
        f"A·σ is the same in return units (σ = {view.sigma:.3g}). Q, V and y are in return units. "
        "<span style='background:rgba(44,160,44,.5);padding:0 4px'>kept</span> A ≥ β (imitated), "
        "<span style='background:rgba(214,39,40,.5);padding:0 4px;border:1px dashed #d62728'>× masked</span> "
        "A < β; the shade is |A − β| relative to the reply's largest, so small advantages stay visible.</div>"
    )


def _chip(view: TokenView, j: int, beta: float, scale: float, selected: bool) -> str:
    a = view.advantage[j]
    kept = a >= beta
    strength = 0.12 + 0.78 * math.sqrt(min(1.0, abs(a - beta) / scale)) if math.isfinite(a - beta) else 0.9
    r, g, b = KEPT_RGB if kept else MASKED_RGB
    border = f"2px solid rgb({r},{g},{b})" if kept else f"2px dashed rgb({r},{g},{b})"
    if selected:
        border = "3px solid #1f3d7a"
    tip = [
        f"{view.tokens[j]!r} ({'kept' if kept else 'masked'} at β={beta:g})",
        f"A {a:+.4g} · A·σ {a * view.sigma:+.4g}",
        f"Q {view.q_taken[j]:+.4g} · V {view.value[j]:+.4g}"
        + (f" · y {view.td_target[j]:+.4g}" if view.td_target else ""),
        f"π {math.exp(view.logp[j]):.3g}" + (f" (rank {view.rank_pi[j]})" if view.rank_pi else ""),
    ]
    if view.rank_q:
        tip.append(f"Q rank {view.rank_q[j]}")
    if view.top_pi:
        tip.append("by π: " + ", ".join(f"{t!r} {p:.2f}" for t, p, _ in view.top_pi[j][:3]))
    mark = "" if kept else "×"
    return (
        f"<span title='{html.escape(chr(10).join(tip), quote=True)}' style='display:inline-block;margin:2px;"
        f"padding:1px 4px;border:{border};border-radius:4px;background:rgba({r},{g},{b},{strength:.2f});"
        f"text-align:center;vertical-align:top'><span style='{MONO};font-size:13px;white-space:pre'>"
        f"{_tok(view.tokens[j])}</span><br><span style='{MONO};font-size:10px;color:#222'>{mark}{a:+.3g}</span>"
        f"<br><span style='{MONO};font-size:9px;color:#555'>{j}</span></span>"
    )


def chips_html(view: TokenView, beta: float | None = None, selected: int | None = None) -> str:
    """The reply as token chips shaded by advantage (hover one for its numbers) and the kept count at `beta`
    (the view's own beta when None); `selected` outlines one position."""
    beta = view.beta if beta is None else beta
    gaps = [abs(a - beta) for a in view.advantage if math.isfinite(a - beta)]
    scale = max(gaps, default=0.0) or 1e-12
    kept = sum(view.kept_at(beta))
    chips = "".join(_chip(view, j, beta, scale, j == selected) for j in range(len(view.tokens)))
    return (
        f"<div style='margin:4px 0;font-size:13px'><b>kept {kept}/{len(view.tokens)}</b> tokens at β = {beta:.3g} · "
        f"reward {view.reward:+g} · largest |A − β| here {scale:.3g}</div><div style='line-height:1.2'>{chips}</div>"
    )


def _ranked_table(title: str, rows: list[tuple[str, float, float]], taken: str, rank: int | None) -> str:
    body = "".join(
        f"<tr style='{'font-weight:bold;background:#fff3c4' if tok == taken else ''}'><td style='{CELL}'>{i + 1}</td>"
        f"<td style='{CELL};{MONO};white-space:pre'>{_tok(tok)}</td><td style='{CELL}'>{p:.3f}</td>"
        f"<td style='{CELL}'>{q:+.3f}</td></tr>"
        for i, (tok, p, q) in enumerate(rows)
    )
    if rank is not None and rank > len(rows):
        body += (
            f"<tr style='font-weight:bold;background:#fff3c4'><td style='{CELL}'>{rank}</td>"
            f"<td style='{CELL}' colspan='3'>the taken token</td></tr>"
        )
    head = "".join(f"<th style='{CELL}'>{h}</th>" for h in ("rank", "token", "π", "Q"))
    return (
        f"<table style='border-collapse:collapse;margin-right:16px;font-size:12px'><caption style='text-align:left'>"
        f"<b>{title}</b></caption><tr>{head}</tr>{body}</table>"
    )


def alternatives_html(view: TokenView, position: int) -> str:
    """At one reply position: the top-k tokens by policy probability and by the online critic's Q, the taken
    token highlighted with its ranks; V is the pi-weighted mean of Q (the ``q`` advantage's baseline)."""
    if view.top_pi is None or view.top_q is None:
        return "<div>(no alternatives: the views were made without top_k)</div>"
    j = position
    taken = view.tokens[j]
    cover = sum(p for _, p, _ in view.top_pi[j])
    line = (
        f"<div style='font-size:12px;margin:4px 0'>position {j}, taken {html.escape(repr(taken))}: π "
        f"{math.exp(view.logp[j]):.3f}, Q {view.q_taken[j]:+.3f}, V {view.value[j]:+.3f}"
        + (f", y {view.td_target[j]:+.3f}" if view.td_target else "")
        + f", A {view.advantage[j]:+.3g} (A·σ {view.advantage[j] * view.sigma:+.3g}). "
        f"The top {len(view.top_pi[j])} by π hold {cover:.0%} of π; V = Σ π Q over the whole vocabulary.</div>"
    )
    tables = _ranked_table("by policy π", view.top_pi[j], taken, view.rank_pi[j] if view.rank_pi else None)
    tables += _ranked_table("by critic Q", view.top_q[j], taken, view.rank_q[j] if view.rank_q else None)
    return line + f"<div style='display:flex;flex-wrap:wrap'>{tables}</div>"


def _pre(text: str, rows: int = 12) -> str:
    return (
        f"<pre style='white-space:pre-wrap;max-height:{rows * 1.3:.0f}em;overflow:auto;background:#f7f7f7;"
        f"padding:4px;margin:2px 0;font-size:12px'>{html.escape(text)}</pre>"
    )


def context_html(view: TokenView) -> str:
    """The turn in its episode: image, prompt, previous reply, this reply, return-to-go, next observation."""
    where = f"episode {html.escape(view.episode_id[:12] or '?')}, turn {view.t}"
    if view.episode_length is not None:
        where += f" of {view.episode_length}"
    facts = (
        f"{where} · {html.escape(view.source or '?')}/{html.escape(view.strategy or '?')} · "
        f"{'valid' if view.valid else 'invalid'} reply · reward {view.reward:+g}"
        + (f" · return-to-go {view.return_to_go:+g}" if view.return_to_go is not None else "")
    )
    image = ""
    if view.image is not None:
        data = base64.b64encode(view.image).decode()
        image = f"<img src='data:image/png;base64,{data}' style='max-width:220px;margin-right:12px'/>"
    parts = [f"<div style='font-size:12px;margin:4px 0'>{facts}</div>"]
    parts.append(f"<details><summary>prompt</summary>{_pre(view.prompt)}</details>")
    if view.previous_reply is not None:
        parts.append(f"<div style='font-size:12px'>previous reply (t={view.t - 1})</div>{_pre(view.previous_reply, 3)}")
    parts.append(f"<div style='font-size:12px'>this reply</div>{_pre(view.reply, 5)}")
    if view.next_obs is None:
        parts.append("<div style='font-size:12px'>the episode ends here</div>")
    else:
        parts.append(f"<div style='font-size:12px'>next observation</div>{_pre(view.next_obs, 6)}")
    return f"<div style='display:flex;align-items:flex-start'>{image}<div style='flex:1'>{''.join(parts)}</div></div>"


def default_position(view: TokenView) -> int:
    """The position to explain first: the action token of a valid reply, else the lowest-advantage token."""
    if view.action_index is not None:
        return view.action_index
    return min(range(len(view.advantage)), key=lambda j: view.advantage[j], default=0)


def turn_html(view: TokenView, beta: float | None = None, position: int | None = None) -> str:
    """One turn, whole: title, chips, the alternatives at `position` (:func:`default_position` when None) and
    its context."""
    j = default_position(view) if position is None else position
    return (
        f"<div style='border-top:1px solid #ccc;padding-top:6px;margin-top:8px;font-size:13px'>"
        f"<b>{html.escape(view.title)}</b>"
        f"{chips_html(view, beta, j)}{alternatives_html(view, j)}{context_html(view)}</div>"
    )


def static_html(views: list[TokenView], beta: float | None = None, limit: int = 6) -> str:
    """The first `limit` turns of `views` rendered with :func:`turn_html`, the units legend once above: what an
    executed notebook keeps (readable in nbconvert HTML and on static viewers; hover a chip for its numbers)."""
    if not views:
        return "<div>no turns to show</div>"
    shown = views[:limit]
    more = f" (the first {len(shown)} of {len(views)})" if len(views) > len(shown) else ""
    note = (
        f"<div style='font-size:12px;color:#666'>Token inspector, static rendering{more}: no kernel is attached, "
        "so there are no controls; run the notebook in JupyterLab for filters, sorting and a live β.</div>"
    )
    return f"<div>{note}{units_html(views[0])}{''.join(turn_html(v, beta) for v in shown)}</div>"


class StaticHTML:
    """What :func:`inspect` and :func:`browse_samples` return without an interactive front end: HTML, no controls."""

    def __init__(self, html: str) -> None:
        self.html = html

    def _repr_html_(self) -> str:
        return self.html


## Widget ##


def _kept_fraction(view: TokenView, beta: float) -> float:
    kept = view.kept_at(beta)
    return sum(kept) / len(kept) if kept else 0.0


class TokenInspector(widgets.VBox):
    """Browse turns by what the filter does to them. Controls: ``source``, ``strategy``, ``validity``, ``group``
    (a :data:`~vlmq_core.inspector.FILTER_GROUPS` group the turn has tokens in), ``reward`` (a range),
    ``action_masked`` (only valid replies whose action token is masked), ``sort``; ``beta`` recomputes every mask,
    kept count and group share live; ``turns`` picks a turn, ``position`` a token for the top-k alternatives;
    ``group_buttons`` show each group's kept share and filter to its turns; ``previous``/``next`` walk the
    episode. ``chips``, ``alternatives`` and ``context`` are the HTML panels."""

    def __init__(self, views: list[TokenView], beta: float = 0.0) -> None:
        if not views:
            raise ValueError("the token inspector needs at least one TokenView: token_views(policy, transitions)")
        self.views = list(views)
        self._by_step = {(v.episode_id, v.t): i for i, v in enumerate(self.views)}
        adv = [a for v in self.views for a in v.advantage if math.isfinite(a)] or [0.0]
        lo, hi = min(min(adv), beta), max(max(adv), beta)
        step = 10 ** math.floor(math.log10(max(hi - lo, 1e-9) / 200))  # a round step, so beta is on the grid
        lo, hi = beta - math.ceil((beta - lo) / step + 5) * step, beta + math.ceil((hi - beta) / step + 5) * step
        self.beta = widgets.FloatSlider(
            value=beta, min=lo, max=hi, step=step, description="β", readout_format=".3g", layout={"width": "420px"}
        )
        self._digits = max(0, -math.floor(math.log10(step))) + 3  # beta to the slider's precision, no float dust
        choices = lambda attr: ["all", *sorted({getattr(v, attr) or "?" for v in self.views})]  # noqa: E731
        self.source = widgets.Dropdown(options=choices("source"), description="source")
        self.strategy = widgets.Dropdown(options=choices("strategy"), description="strategy")
        self.validity = widgets.Dropdown(options=["all", "valid", "invalid"], description="reply")
        self.group = widgets.Dropdown(options=[("any", "all")] + [(k, k) for k in FILTER_GROUPS if k != "all"],
                                      description="group")  # fmt: skip
        rewards = [v.reward for v in self.views]
        self.reward = widgets.FloatRangeSlider(
            value=(min(rewards), max(rewards)), min=min(rewards), max=max(rewards) + (max(rewards) == min(rewards)),
            step=0.01, description="reward", readout_format=".2g",
        )  # fmt: skip
        self.action_masked = widgets.Checkbox(value=False, description="action token masked", indent=False)
        self.sort = widgets.Dropdown(options=list(SORTS), description="sort")
        self.group_buttons = {
            k: widgets.Button(tooltip=FILTER_GROUPS[k], layout={"width": "auto"}) for k in FILTER_GROUPS
        }
        for key, button in self.group_buttons.items():
            button.on_click(lambda _, key=key: self._show_group(key))
        self.turns = widgets.Select(rows=9, description="turns", layout={"width": "98%"})
        self.count = widgets.HTML()
        self.position = widgets.Dropdown(description="position", layout={"width": "320px"})
        self._quiet = False
        self.previous = widgets.Button(description="◀ previous turn", layout={"width": "auto"})
        self.next = widgets.Button(description="next turn ▶", layout={"width": "auto"})
        self.previous.on_click(lambda _: self._walk(-1))
        self.next.on_click(lambda _: self._walk(+1))
        self.legend = widgets.HTML(units_html(self.views[0]))
        self.chips, self.alternatives, self.context = widgets.HTML(), widgets.HTML(), widgets.HTML()
        for control in (self.source, self.strategy, self.validity, self.group, self.reward, self.action_masked,
                        self.sort):  # fmt: skip
            control.observe(lambda _: self._refilter(), names="value")
        self.beta.observe(lambda _: self._on_beta(), names="value")
        self.turns.observe(lambda _: self._show_turn(), names="value")
        self.position.observe(lambda _: self._show_position(), names="value")
        super().__init__(
            [
                self.legend,
                widgets.HBox([self.source, self.strategy, self.validity, self.group]),
                widgets.HBox([self.reward, self.action_masked, self.sort]),
                widgets.HBox([self.beta, self.count]),
                widgets.HBox(list(self.group_buttons.values()), layout={"flex_flow": "row wrap"}),
                self.turns,
                widgets.HBox([self.previous, self.next, self.position]),
                self.chips,
                self.alternatives,
                self.context,
            ]
        )
        self._refresh_groups()
        self._refilter()

    @property
    def current_beta(self) -> float:
        """The slider's beta, rounded to its step's precision (the slider's own float arithmetic adds 1e-17s)."""
        return round(self.beta.value, self._digits)

    # what the controls select
    def _passes(self, view: TokenView) -> bool:
        beta = self.current_beta
        lo, hi = self.reward.value
        return (
            self.source.value in ("all", view.source or "?")
            and self.strategy.value in ("all", view.strategy or "?")
            and self.validity.value in ("all", "valid" if view.valid else "invalid")
            and (self.group.value == "all" or self.group.value in view.groups(beta))
            and lo - 1e-9 <= view.reward <= hi + 1e-9
            and (not self.action_masked.value or view.action_masked(beta))
        )  # fmt: skip

    def filtered(self) -> list[int]:
        """Indices of the views the controls select, in the chosen order."""
        idx = [i for i, v in enumerate(self.views) if self._passes(v)]
        key = SORTS[self.sort.value]
        if key == "kept":
            idx.sort(key=lambda i: _kept_fraction(self.views[i], self.current_beta))
        elif key is not None:
            idx.sort(key=lambda i: key(self.views[i]))
        return idx

    def _label(self, i: int) -> str:
        v, beta = self.views[i], self.current_beta
        kept = sum(v.kept_at(beta))
        reply = visible_token(v.reply)[:48]
        return f"{i:>4} · {v.source}/{v.strategy} · t={v.t} · r={v.reward:+g} · kept {kept}/{len(v.tokens)} · {reply}"

    # reactions
    def _refilter(self) -> None:
        idx = self.filtered()
        current = self.turns.value
        self.turns.options = [(self._label(i), i) for i in idx]
        self.count.value = f"<span style='margin-left:12px'>{len(idx)} of {len(self.views)} turns</span>"
        if idx:
            self.turns.value = current if current in idx else idx[0]
        self._show_turn()

    def _on_beta(self) -> None:
        self._refresh_groups()
        self._refilter()

    def _refresh_groups(self) -> None:
        for key, (frac, n) in group_kept(self.views, self.current_beta).items():
            share = "–" if not n else f"{frac:.0%}"
            self.group_buttons[key].description = f"{key}: kept {share} of {n}"

    def _show_group(self, key: str) -> None:
        self.group.value = key

    def _walk(self, step: int) -> None:
        if self.turns.value is None:
            return
        v = self.views[self.turns.value]
        target = self._by_step.get((v.episode_id, v.t + step))
        if target is None:
            return
        if target not in self.filtered():  # show the episode's neighbour even when the filters hide it
            for control, value in ((self.source, "all"), (self.strategy, "all"), (self.validity, "all"),
                                   (self.group, "all"), (self.action_masked, False)):  # fmt: skip
                control.value = value
            self.reward.value = (self.reward.min, self.reward.max)
        self.turns.value = target

    def _show_turn(self) -> None:
        i = self.turns.value
        if i is None:
            self.chips.value = "<div>no turn passes these filters</div>"
            self.alternatives.value = self.context.value = ""
            self.previous.disabled = self.next.disabled = True
            return
        v = self.views[i]
        self.previous.disabled = (v.episode_id, v.t - 1) not in self._by_step
        self.next.disabled = (v.episode_id, v.t + 1) not in self._by_step
        options = [
            (f"{j}: {visible_token(t)} (A {a:+.3g})", j)
            for j, (t, a) in enumerate(zip(v.tokens, v.advantage, strict=True))
        ]
        self._quiet = True  # the position observer waits until the new options and value are both set
        self.position.options = options
        self.position.value = default_position(v)
        self._quiet = False
        self.context.value = context_html(v)
        self._show_position()

    def _show_position(self) -> None:
        i, j = self.turns.value, self.position.value
        if self._quiet or i is None or j is None:
            return
        v = self.views[i]
        self.chips.value = f"<b>{html.escape(v.title)}</b>" + chips_html(v, self.current_beta, j)
        self.alternatives.value = alternatives_html(v, j)


## Entry point ##


def interactive_frontend() -> bool:
    """Whether this code runs in a kernel whose front end a person uses (JupyterLab, Notebook, VS Code): they
    accept input requests, while papermill and ``nbconvert --execute`` (nbclient) run with input disabled."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipywidgets depends on IPython
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    return kernel is not None and bool(getattr(kernel, "_allow_stdin", False))


def inspect(views: list[TokenView], beta: float = 0.0, static_turns: int = 6) -> TokenInspector | StaticHTML:
    """The token inspector over `views` (:func:`vlmq_core.inspector.token_views`): the live widget where a person
    drives the notebook, else the static HTML of the first `static_turns` turns (no control that cannot work)."""
    if interactive_frontend():
        return TokenInspector(views, beta)
    return StaticHTML(static_html(views, beta, static_turns))


## Dataset samples ##


def sample_html(turn: Turn) -> str:
    """One dataset turn as a card: image, task, source, strategy, reward, validity, the prompt and the reply."""
    image = ""
    if turn.image is not None:
        data = base64.b64encode(turn.image).decode()
        image = f"<img src='data:image/png;base64,{data}' style='max-width:200px;margin-right:12px'/>"
    facts = (
        f"<b>{html.escape(turn.task)}</b> · {html.escape(turn.source)}/{html.escape(turn.strategy)} · turn {turn.t} · "
        f"reward {turn.reward:+g} · {'valid' if turn.valid else 'invalid'} reply"
        + (" · ends the episode" if turn.done else "")
    )
    body = (
        f"<div style='font-size:12px'>{facts}</div><details><summary>prompt</summary>{_pre(turn.prompt)}</details>"
        f"<div style='font-size:12px'>reply</div>{_pre(turn.reply, 5)}"
    )
    return (
        "<div style='display:flex;align-items:flex-start;border-top:1px solid #ccc;padding-top:6px;margin-top:6px'>"
        f"{image}<div style='flex:1'>{body}</div></div>"
    )


def static_samples(turns: list[Turn], per_source: int = 1) -> str:
    """The first `per_source` turns of each (task, source) as :func:`sample_html` cards: an executed notebook's
    sample browser."""
    seen: dict[tuple[str, str], int] = {}
    cards = []
    for turn in turns:
        key = (turn.task, f"{turn.source}/{turn.strategy}")
        if seen.get(key, 0) < per_source:
            seen[key] = seen.get(key, 0) + 1
            cards.append(sample_html(turn))
    note = (
        f"<div style='font-size:12px;color:#666'>Dataset samples, static rendering: {len(cards)} of {len(turns)} "
        "turns, one per task and source; run the notebook in JupyterLab to browse them all.</div>"
    )
    return note + "".join(cards)


class SampleBrowser(widgets.VBox):
    """Browse a dataset's turns: ``task``, ``source`` (source/strategy) and ``validity`` filter them, ``index``
    steps through what passes; ``card`` shows the turn (:func:`sample_html`)."""

    def __init__(self, turns: list[Turn]) -> None:
        if not turns:
            raise ValueError("the sample browser needs at least one turn: build a dataset first")
        self.all_turns = list(turns)
        self.task = widgets.Dropdown(options=["all", *sorted({t.task for t in turns})], description="task")
        sources = sorted({f"{t.source}/{t.strategy}" for t in turns})
        self.source = widgets.Dropdown(options=["all", *sources], description="source")
        self.validity = widgets.Dropdown(options=["all", "valid", "invalid"], description="reply")
        self.index = widgets.IntSlider(min=0, max=0, description="turn")
        self.count, self.card = widgets.HTML(), widgets.HTML()
        for control in (self.task, self.source, self.validity):
            control.observe(lambda _: self._refilter(), names="value")
        self.index.observe(lambda _: self._show(), names="value")
        super().__init__(
            [widgets.HBox([self.task, self.source, self.validity]), widgets.HBox([self.index, self.count]), self.card]
        )
        self._refilter()

    def filtered(self) -> list[Turn]:
        """The turns the controls select, in dataset order."""
        return [
            t
            for t in self.all_turns
            if self.task.value in ("all", t.task)
            and self.source.value in ("all", f"{t.source}/{t.strategy}")
            and self.validity.value in ("all", "valid" if t.valid else "invalid")
        ]

    def _refilter(self) -> None:
        self._turns = self.filtered()
        self.index.max = max(0, len(self._turns) - 1)
        self.index.value = 0
        self.count.value = f"<span style='margin-left:12px'>{len(self._turns)} of {len(self.all_turns)} turns</span>"
        self._show()

    def _show(self) -> None:
        if not self._turns:
            self.card.value = "<div>no turn passes these filters</div>"
            return
        self.card.value = sample_html(self._turns[self.index.value])


def browse_samples(turns: list[Turn], static_per_source: int = 1) -> SampleBrowser | StaticHTML:
    """The sample browser where a person drives the notebook, else :func:`static_samples` (no dead controls)."""
    if interactive_frontend():
        return SampleBrowser(turns)
    return StaticHTML(static_samples(turns, static_per_source))
