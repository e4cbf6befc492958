"""Progress bars in a notebook end as one line of text (vlmq_core.progress), not a widget frozen at 0%."""

from __future__ import annotations

import re

import IPython.display
import pytest

from vlmq_core.progress import NotebookBar, bar, in_notebook


@pytest.fixture
def shown(monkeypatch) -> list[str]:
    """The text of the bar's one output, after each display or in-place update."""
    texts: list[str] = []

    class Handle:
        def update(self, bundle, raw):
            texts.append(bundle["text/plain"])

    def display(bundle, raw, display_id):
        assert raw and display_id
        texts.append(bundle["text/plain"])
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    return texts


def test_a_notebook_bar_updates_one_output_and_ends_as_its_final_line(shown):
    b = NotebookBar(total=3, desc="train afsft", mininterval=0)
    for _ in range(3):
        b.update(1)
    b.set_postfix(loss="0.5")
    b.close()
    assert shown[0].startswith("train afsft:") and "0/3" in shown[0]
    assert re.fullmatch(r"train afsft: 3/3 in 00:0\d \(loss=0\.5\)", shown[-1]), shown[-1]


def test_a_bar_that_would_not_stay_in_a_terminal_also_ends_as_its_line_and_a_disabled_one_shows_nothing(shown):
    b = NotebookBar(total=2, desc="eval NumberLine/agent", leave=False, unit="episode", bar_format="{desc}: {n_fmt}")
    b.update(2)
    b.close()
    assert re.fullmatch(r"eval NumberLine/agent: 2/2 in 00:0\d", shown[-1]), shown[-1]
    count = len(shown)
    quiet = NotebookBar(total=2, desc="quiet", disable=True)
    quiet.update(2)
    quiet.close()
    assert len(shown) == count


def test_outside_a_kernel_the_bar_is_the_terminal_one():
    assert not in_notebook() and not isinstance(bar(total=1, disable=True), NotebookBar)
