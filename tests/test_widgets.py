"""The token inspector (vlmq_core.widgets): its HTML, the live widget's filters, beta, groups and walks, and the
static fallback without an interactive front end. Views are built by hand, so every expected number is known."""

from __future__ import annotations

import math

import pytest

from vlmq_core.inspector import FILTER_GROUPS, TokenView, group_kept
from vlmq_core.widgets import (
    StaticHTML,
    TokenInspector,
    alternatives_html,
    chips_html,
    context_html,
    inspect,
    interactive_frontend,
    static_html,
)


def _view(
    adv: list[float],
    reward: float = -1.0,
    valid: bool = True,
    source: str = "random",
    strategy: str = "random",
    episode: str = "e0",
    t: int = 0,
    tokens: list[str] | None = None,
) -> TokenView:
    tokens = tokens or ["[action]", " +", "<end>"][: len(adv)] + ["x"] * max(0, len(adv) - 3)
    n = len(tokens)
    return TokenView(
        tokens=tokens,
        advantage=adv,
        q_taken=[-1.0 - j for j in range(n)],
        value=[-2.0] * n,
        logp=[math.log(0.5)] * n,
        kept=[a >= 0 for a in adv],
        prompt="prompt <b>&",
        reply="[action] +",
        reward=reward,
        title=f"{source}/{strategy} t={t}",
        sigma=2.0,
        top_pi=[[(" +", 0.5, -1.0), (" -", 0.3, -0.5)]] * n,
        top_q=[[(" -", 0.3, -0.5), (" +", 0.5, -1.0)]] * n,
        rank_pi=[1] * n,
        rank_q=[2] * n,
        source=source,
        strategy=strategy,
        valid=valid,
        episode_id=episode,
        t=t,
        next_obs=None if t == 1 else "Target: 3. Current: 4.",
        return_to_go=-2.0,
        episode_length=2,
        previous_reply="[action] -" if t else None,
    )


def _views() -> list[TokenView]:
    return [
        _view([0.3, -0.2, 0.1], reward=-1.0, episode="e0", t=0),  # bad move, action token masked
        _view([0.3, 0.2, 0.1], reward=0.0, episode="e0", t=1),  # good move, kept
        _view([-0.5, -0.4], reward=-2.0, valid=False, source="model", strategy="agent", episode="e1"),
        _view([0.001, 0.0005, 0.002], reward=1.0, episode="e2"),  # tiny advantages, all kept at beta 0
    ]


## HTML ##


def test_chips_show_every_token_its_advantage_and_the_kept_count_at_any_beta():
    view = _views()[3]
    at0 = chips_html(view, 0.0)
    assert "kept 3/3" in at0 and "+0.001" in at0 and "+0.0005" in at0  # tiny values stay readable as numbers
    assert "dashed" not in at0  # kept chips have solid borders
    higher = chips_html(view, 0.0015)
    assert "kept 1/3" in higher and higher.count("2px dashed") == 2 and higher.count("×") == 2
    assert "β = 0.0015" in higher


def test_html_escapes_model_text_and_states_units():
    view = _views()[0]
    view.tokens[1] = "<script>"
    html = chips_html(view) + context_html(view) + alternatives_html(view, 1)
    assert "<script>" not in html and "&lt;script&gt;" in html and "prompt &lt;b&gt;&amp;" in html
    alt = alternatives_html(view, 1)
    assert "A -0.2 (A·σ -0.4)" in alt and "rank" in alt and "by critic Q" in alt
    static = static_html(_views(), limit=2)
    assert static.count("PopArt-normalised") == 1 and "(the first 2 of 4)" in static and "no kernel" in static
    assert "return-to-go -2" in static and "the episode ends here" not in static_html([_views()[0]])
    assert "the episode ends here" in static_html([_views()[1]]) and "previous reply (t=0)" in static_html(
        _views()[1:2]
    )


def test_alternatives_mark_a_taken_token_outside_the_top_k():
    view = _views()[0]
    view.rank_q = [9, 9, 9]
    view.tokens[1] = " ?"
    assert "<td style='padding:1px 8px;text-align:left'>9</td>" in alternatives_html(view, 1)


## widget ##


def test_inspector_beta_recomputes_masks_counts_and_groups():
    views = _views()
    ui = TokenInspector(views)
    assert ui.turns.value == 0 and "4 of 4 turns" in ui.count.value
    assert ui.group_buttons["action_bad"].description == "action_bad: kept 0% of 1"
    assert ui.group_buttons["action_good"].description == "action_good: kept 100% of 2"
    ui.turns.value = 3
    assert "kept 3/3" in ui.chips.value
    ui.beta.value = 0.0015
    assert ui.current_beta == 0.0015 and "kept 1/3" in ui.chips.value
    assert ui.group_buttons["all"].description == f"all: kept {6 / 11:.0%} of 11"
    assert group_kept(views, 0.0015)["all"] == (6 / 11, 11)
    assert all(v.kept == [a >= 0 for a in v.advantage] for v in views)  # the views themselves are untouched


def test_inspector_filters_sort_and_group_click_through():
    ui = TokenInspector(_views())
    ui.validity.value = "invalid"
    assert [i for _, i in ui.turns.options] == [2] and ui.turns.value == 2
    ui.validity.value = "all"
    ui.source.value = "random"
    assert [i for _, i in ui.turns.options] == [0, 1, 3]
    ui.source.value = "all"
    ui.action_masked.value = True
    assert [i for _, i in ui.turns.options] == [0]
    ui.action_masked.value = False
    ui.group_buttons["invalid"].click()
    assert ui.group.value == "invalid" and [i for _, i in ui.turns.options] == [2]
    ui.group.value = "all"
    ui.sort.value = "reward, high first"
    assert [i for _, i in ui.turns.options] == [3, 1, 0, 2]
    ui.sort.value = "kept fraction, low first"
    assert [i for _, i in ui.turns.options][0] == 2  # nothing kept
    ui.reward.value = (-1.0, 0.5)
    assert sorted(i for _, i in ui.turns.options) == [0, 1]
    ui.reward.value = (0.5, 0.5)  # no turn has reward 0.5
    assert ui.turns.options == () and "no turn passes" in ui.chips.value


def test_inspector_positions_and_episode_walk():
    ui = TokenInspector(_views())
    assert ui.position.value == 1  # the action token of a valid reply
    assert "position 1, taken" in ui.alternatives.value and "outline" not in ui.chips.value
    ui.position.value = 0
    assert "position 0, taken" in ui.alternatives.value
    assert ui.previous.disabled and not ui.next.disabled
    ui.validity.value = "valid"
    ui.next.click()
    assert ui.turns.value == 1 and "turn 1 of 2" in ui.context.value and ui.next.disabled
    ui.group.value = "action_bad"  # hides turn 1; walking back still shows turn 0
    ui.group.value = "action_good"
    ui.previous.click()
    assert ui.turns.value == 0 and ui.group.value == "all"
    ui.turns.value = 2  # an invalid reply: the lowest-advantage token first
    assert ui.position.value == 0


def test_inspect_is_static_without_an_interactive_front_end():
    assert not interactive_frontend()  # pytest: no kernel
    shown = inspect(_views(), static_turns=1)
    assert isinstance(shown, StaticHTML)
    html = shown._repr_html_()
    assert "(the first 1 of 4)" in html and "<select" not in html and "<input" not in html
    with pytest.raises(ValueError, match="token_views"):
        TokenInspector([])
    assert set(FILTER_GROUPS) == {"all", "format", "action_good", "action_bad", "invalid"}
