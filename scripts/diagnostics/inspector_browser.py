"""The token inspector as a user meets it: in JupyterLab (live widget) and in an nbconvert HTML export (static),
both driven by Debian's Chromium through playwright, with screenshots to look at.

    python scripts/diagnostics/inspector_browser.py [--run runs/numberline/afsft] [--out docs/images]

Needs notebook 03's AFSFT run (its config names the data), ``pip install -e .[notebooks,browser]`` (jupyterlab,
nbconvert, playwright: the Python package only, never ``playwright install``) and ``/usr/bin/chromium``
(``apt-get install chromium``).
Checks, failing loudly: the widget renders; moving beta changes the kept count; a group button filters the turns;
another turn and position update the alternatives; the executed (papermill) notebook has no widget, only the
static chips, and its HTML export shows them. Writes ``inspector_lab*.png`` and ``inspector_static.png``.
About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def notebook(run: str, turns: int) -> nbformat.NotebookNode:
    setup = f"""import os, random
os.chdir({str(ROOT)!r})
from vlmq_core.inspector import token_views
from vlmq_core.run import load_config, open_dataset, train
from vlmq_core.widgets import inspect
cfg = load_config({run + "/config.yaml"!r})
run = train(cfg, progress=False)  # a finished run: resumes at its last update and trains nothing
buffer = open_dataset(cfg)
random.seed(0)
chosen = random.sample(buffer.transitions(), {turns})
views = token_views(run.policy, chosen, loss=cfg.loss, episodes=buffer.episodes())"""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell("inspect(views)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return nb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compact(path: Path, left: int = 0) -> None:
    """Crop `left` pixels (JupyterLab's file browser) and store the screenshot as a 256-colour PNG (~4x smaller)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image.crop((left, 0, image.width, image.height)).quantize(256).save(path, optimize=True)


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        raise SystemExit(1)


def lab(folder: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={folder}", "--LabApp.news_url=None", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            for _ in range(60):  # the server needs a few seconds
                try:
                    page.goto(f"http://127.0.0.1:{port}/lab/tree/inspector.ipynb")
                    break
                except Exception:
                    time.sleep(1)
            try:
                drive_lab(page, out)
            except Exception:
                page.screenshot(path=str(out / "inspector_lab_failure.png"))
                print(f"see {out / 'inspector_lab_failure.png'}", flush=True)
                raise
            browser.close()
        for shot in out.glob("inspector_lab*.png"):
            compact(shot, left=290)
    finally:
        server.terminate()
        server.wait(timeout=30)


def drive_lab(page, out: Path) -> None:
    if True:
        if True:
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_timeout(5000)  # the kernel starts; Shift+Enter queues the cells meanwhile
            page.locator(".jp-Cell").first.click()
            page.keyboard.press("Shift+Enter")
            page.keyboard.press("Shift+Enter")
            page.wait_for_selector(".widget-select select", timeout=300_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "inspector_lab.png"), full_page=False)
            count = page.locator("text=/\\d+ of \\d+ turns/").first.inner_text()
            kept_before = page.locator("text=/kept \\d+\\/\\d+/").first.inner_text()
            check("of" in count, f"the widget rendered in JupyterLab ({count}; {kept_before})")

            page.locator(".widget-slider", has_text="β").locator(".noUi-handle").first.focus()
            for _ in range(20):  # twenty steps up, as a user would with the arrow keys
                page.keyboard.press("ArrowRight")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "inspector_lab_beta.png"), full_page=False)
            kept_after = page.locator("text=/kept \\d+\\/\\d+/").first.inner_text()
            check(
                kept_after != kept_before, f"beta 0 -> 20 steps up recomputes the mask ({kept_before} -> {kept_after})"
            )

            page.locator("button", has_text="action_bad").first.click()
            page.wait_for_timeout(1500)
            count_bad = page.locator("text=/\\d+ of \\d+ turns/").first.inner_text()
            check(count_bad != count, f"the action_bad group button filters the turns ({count} -> {count_bad})")
            page.screenshot(path=str(out / "inspector_lab_filtered.png"), full_page=False)

            options = page.locator(".widget-select select option")
            if options.count() > 1:
                before = page.locator("text=/position \\d+, taken/").first.inner_text()
                page.locator(".widget-select select").select_option(index=1)
                page.wait_for_timeout(1500)
                after = page.locator("text=/position \\d+, taken/").first.inner_text()
                check(before != after, f"another turn shows its own alternatives ({after[:60]})")
            position = page.locator(".widget-dropdown select").last
            position.select_option(index=0)
            page.wait_for_timeout(1500)
            at0 = page.locator("text=/position \\d+, taken/").first.inner_text()
            check(at0.startswith("position 0"), f"picking position 0 shows its alternatives ({at0[:60]})")
            page.screenshot(path=str(out / "inspector_lab_position.png"), full_page=False)


def static(folder: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    executed = folder / "executed.ipynb"
    subprocess.run(
        [sys.executable, "-m", "papermill", str(folder / "inspector.ipynb"), str(executed), "-k", "python3"],
        check=True, capture_output=True,
    )  # fmt: skip
    nb = nbformat.read(executed, 4)
    data = nb.cells[-1].outputs[0]["data"]
    check("application/vnd.jupyter.widget-view+json" not in data, "papermill's execution holds no widget")
    check("text/html" in data and "kept " in data["text/html"], "it holds the static chips as HTML")
    subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(executed)], check=True, capture_output=True
    )
    html_path = executed.with_suffix(".html")
    text = html_path.read_text()
    check(not re.search(r"widget-(slider|dropdown|select)", text), "the HTML export has no controls")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(html_path.as_uri())
        page.wait_for_timeout(1000)
        page.locator("text=Token inspector, static rendering").first.scroll_into_view_if_needed()
        page.screenshot(path=str(out / "inspector_static.png"), full_page=False)
        browser.close()
    compact(out / "inspector_static.png")
    check(True, f"static rendering screenshot: {out / 'inspector_static.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/numberline/afsft", help="a finished AFSFT run folder (notebook 03's)")
    ap.add_argument("--turns", type=int, default=40, help="random dataset turns to inspect")
    ap.add_argument("--out", default="docs/images", help="where the screenshots go")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing. Fix: apt-get install -y chromium")
    if not (ROOT / args.run / "config.yaml").exists():
        raise SystemExit(f"{args.run}/config.yaml is missing. Fix: run notebook 03 (bash scripts/main.sh 03) first.")
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="vlmq-inspector-"))
    try:
        nbformat.write(notebook(args.run, args.turns), folder / "inspector.ipynb")
        lab(folder, out)
        static(folder, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
