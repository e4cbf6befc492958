"""How a notebook's figures are saved: plotly's JSON for JupyterLab, and a PNG beside it for every other viewer.

A figure shown in a notebook becomes one output holding two pictures of it: ``application/vnd.plotly.v1+json``,
which JupyterLab renders as the interactive figure, and ``image/png``, which a code host, nbviewer, nbconvert's
HTML or a mail shows without JavaScript. No plotly.js goes into the notebook. The PNG is made offline by kaleido
driving a local Chromium (the one MiniWoB++ uses), kept running for the session: the first figure costs about 2 s,
each later one about 0.15 s on 2 cores. Without kaleido or a browser the notebook still runs, and says once that
its figures carry no picture.
"""

from __future__ import annotations

import atexit
import os
import shutil
import warnings

import plotly.graph_objects as go
import plotly.io as pio

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
"""Executables searched on PATH for kaleido when ``BROWSER_PATH`` is not set."""

PNG_SCALE = 1.0
"""Pixels per layout pixel of the saved PNG: 1 keeps a figure near 50 KB (a learning-curve grid 60-120 KB)."""

_state: dict[str, object] = {}


def _start_kaleido() -> str | None:
    """Start kaleido's browser for the session; None when it works, else why it does not (one phrase)."""
    try:
        import kaleido
    except ImportError:
        return "kaleido is not installed (pip install 'vlmq[notebooks]')"
    if not os.environ.get("BROWSER_PATH"):
        found = next((p for p in map(shutil.which, BROWSERS) if p), None)
        if found is None:
            return "no Chromium or Chrome on PATH (apt-get install chromium, or set BROWSER_PATH)"
        os.environ["BROWSER_PATH"] = found
    try:
        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            go.Figure().to_image(format="png", width=10, height=10)  # the browser answers, or this raises
    except Exception as e:  # a browser that does not start (sandbox, missing libraries)
        return f"kaleido could not drive {os.environ['BROWSER_PATH']} ({type(e).__name__}: {str(e)[:120]})"
    return None


def setup_figures(static: bool = True) -> bool:
    """Show every plotly figure of this kernel as plotly JSON plus, with `static`, a PNG (see the module's
    docstring). Returns whether figures carry a PNG; when they cannot, prints why once."""
    if static and "static" not in _state:
        _state["why_not"] = _start_kaleido()
        _state["static"] = _state["why_not"] is None
        if not _state["static"]:
            print(
                f"Figures will carry no static picture: {_state['why_not']}. They still show in JupyterLab; viewers "
                "without JavaScript will show nothing."
            )
    on = bool(static and _state.get("static"))
    pio.renderers["png"].scale = PNG_SCALE
    pio.renderers.default = "plotly_mimetype+png" if on else "plotly_mimetype"
    # kaleido's server ignores per-call browser options; plotly warns on every figure that it ignores them
    warnings.filterwarnings("ignore", message="The kopts argument is ignored", category=UserWarning)
    return on
