"""Progress bars that leave the right thing behind: a terminal bar on the command line, and in a notebook one line
of text replaced in place, which the saved notebook keeps as its final state (``train afsft: 200/200 in 13 min``).

tqdm's notebook bars are widgets: a notebook executed by papermill and opened later without a kernel shows each
as its first state, ``0% 0/272``, and nbconvert's HTML leaves a blank gap. :func:`bar` gives every vlmq loop the
same tqdm interface with a plain-text output instead.
"""

from __future__ import annotations

import io
from typing import Any

from tqdm.std import tqdm


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (a notebook, papermill), not a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class NotebookBar(tqdm):
    """A tqdm bar whose line is one notebook output (``display_id``), updated in place; at the end it reads
    ``<desc>: <n>/<total> in <time>`` (with the last postfix), whether or not the bar would stay in a terminal: a
    notebook keeps what happened, a blank output would only leave a gap."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._handle = None
        kwargs["file"] = io.StringIO()  # the text goes to the output below, not to stderr
        kwargs.setdefault("mininterval", 1.0)
        super().__init__(*args, **kwargs)

    def _show(self, text: str) -> None:
        from IPython.display import display

        bundle = {"text/plain": text}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self.disable:
            self._show(self.__str__() if msg is None else msg)
        return True

    def close(self) -> None:
        if self.disable:
            return
        self.leave = True  # tqdm would clear its (unused) file otherwise; the output below is what stays
        super().close()
        elapsed = self.format_interval(self.format_dict["elapsed"])
        total = f"/{self.total}" if self.total else ""
        postfix = f" ({self.postfix})" if self.postfix else ""
        self._show(f"{self.desc or 'done'}: {self.n}{total} in {elapsed}{postfix}")


def bar(*args: Any, **kwargs: Any) -> tqdm:
    """A tqdm progress bar: :class:`NotebookBar` in a notebook, tqdm's terminal bar elsewhere (same arguments)."""
    return NotebookBar(*args, **kwargs) if in_notebook() else tqdm(*args, **kwargs)
