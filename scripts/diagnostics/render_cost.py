"""What issue 31's static pictures cost: starting kaleido's browser with the first figure, then each later figure.

    python scripts/diagnostics/render_cost.py [--figures 10]

Draws a three-panel learning-curve figure (two runs of 600 points, as notebook 03 shows) to PNG the way every
notebook figure is drawn (``vlmq_core.render``: kaleido driving the Chromium on PATH, ``PNG_SCALE``) and prints the
start-up seconds, the seconds per figure and the PNG's size. Needs the notebooks extra and a Chromium.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--figures", type=int, default=10)
    args = ap.parse_args()
    t0 = time.perf_counter()
    from vlmq_core import render

    why = render._start_kaleido()
    if why:
        raise SystemExit(f"no static renderer: {why}")
    import plotly.graph_objects as go

    go.Figure(go.Bar(x=["a", "b"], y=[1, 2])).to_image(format="png")
    start = time.perf_counter() - t0
    from vlmq_core.plots import learning_curves

    rng = random.Random(0)
    rows = [{"step": i, **{k: rng.random() for k in ("loss", "train/kept_frac", "eval/success")}} for i in range(600)]
    times, sizes = [], []
    for _ in range(args.figures):
        fig = learning_curves({"sft": rows, "afsft": rows}, keys=["loss", "train/kept_frac", "eval/success"])
        t = time.perf_counter()
        sizes.append(len(fig.to_image(format="png", scale=render.PNG_SCALE)))
        times.append(time.perf_counter() - t)
    print(
        f"start (import, browser, first figure) {start:.2f} s; per figure {min(times):.2f}-{max(times):.2f} s "
        f"(median {statistics.median(times):.2f}, {args.figures} figures); PNG {statistics.mean(sizes) / 1e3:.0f} KB"
    )


if __name__ == "__main__":
    main()
