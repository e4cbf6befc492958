"""Executed notebooks as JupyterLab opens them: does opening one mark it modified, and what does a reader see?

For each notebook, a fresh JupyterLab (its own folder holding only a copy of that notebook, its own empty workspace)
is opened in Debian's Chromium at ``/lab/tree/<name>?reset``; it starts the notebook's kernel, as it does for any
user. The tab checked is the one whose label is the notebook's name, and the outputs counted are those of the
notebook panel shown, so a restored workspace cannot answer for another notebook. Reported per notebook: the
unsaved-changes mark once the notebook has rendered and settled, the images among its outputs, any widget
JupyterLab cannot restore ("Loading widget..." / "Error displaying widget"). Then a control: one character typed
into the first code cell must set the mark, or the check itself is wrong. A screenshot of each goes to ``--out``.

    python scripts/diagnostics/lab_open.py nbs_outputs/03_offline_afsft.ipynb nbs_outputs/04_offline_to_online.ipynb

What it found (issue 31): every notebook, even a two-cell one, was marked modified on open because its kernelspec
said "Python 3" and ipykernel's says "Python 3 (ipykernel)": JupyterLab rewrites it when the kernel starts.
``tests/test_project.py`` now checks the kernelspec of every notebook.

Needs ``pip install -e .[notebooks,browser]`` (jupyterlab, playwright: the Python package only) and
``/usr/bin/chromium``. About 15 s per notebook on 2 cores. Exit status 1 when a notebook is marked modified on open,
shows an unrestorable widget, or the control fails.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path) -> tuple[subprocess.Popen, int]:
    """A JupyterLab rooted at `folder`, with a workspace folder of its own."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={folder}", "--LabApp.news_url=None", "--allow-root",
         f"--LabApp.user_settings_dir={folder / '.settings'}", f"--LabApp.workspaces_dir={folder / '.workspaces'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return server, port


def check(browser, nb: Path, out: Path, settle: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="lab_open_"))
    shutil.copy(nb, folder / nb.name)
    server, port = serve(folder)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        for _ in range(90):  # the server needs a few seconds
            try:
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{nb.name}?reset")
                break
            except Exception:
                time.sleep(1)
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        panel.locator(".jp-Cell").first.wait_for(timeout=120_000)
        page.wait_for_timeout(settle * 1000)
        if page.locator(".jp-Dialog").count():  # a kernel dialog: a reader would pick the default
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
            page.wait_for_timeout(1000)
        tab = page.locator(".lm-DockPanel .lm-TabBar-tab").filter(
            has=page.locator(".lm-TabBar-tabLabel", has_text=nb.name)
        )
        tabs = tab.count()
        dirty = tabs == 1 and "jp-mod-dirty" in (tab.get_attribute("class") or "")
        report = {
            "tabs named so": tabs,
            "modified on open": dirty,
            "cells": panel.locator(".jp-Cell").count(),
            "images": panel.locator(".jp-OutputArea-output img").count(),
            "unrestorable widgets": panel.locator(
                ".jp-OutputArea-output:has-text('Loading widget'), "
                ".jp-OutputArea-output:has-text('Error displaying widget')"
            ).count(),
        }
        shot = out / f"{nb.stem}-lab.png"
        page.screenshot(path=str(shot))
        report["screenshot"] = str(shot)
        # the control: an edit must set the mark on the same tab, or the selectors above read the wrong thing
        panel.locator(".jp-CodeCell .cm-content").first.click()
        page.keyboard.type("#")
        page.wait_for_timeout(1000)
        report["control: marked after an edit"] = "jp-mod-dirty" in (tab.get_attribute("class") or "")
        page.close()
        return report
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "lab_open")
    ap.add_argument("--settle", type=float, default=8.0, help="seconds to wait after the notebook renders")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for nb in args.notebooks:
            report = check(browser, nb, args.out, args.settle)
            print(f"{nb.name}: " + "; ".join(f"{k}: {v}" for k, v in report.items()), flush=True)
            failed |= (
                report["tabs named so"] != 1
                or report["modified on open"]
                or report["unrestorable widgets"] > 0
                or not report["control: marked after an edit"]
            )
        browser.close()
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
