"""Executed notebooks as JupyterLab opens them: does opening one mark it modified, and what does a reader see?

Opens each executed notebook (a copy, so nothing in nbs_outputs/ changes) in JupyterLab with no kernel, waits for
it to render, and reports whether the tab shows the unsaved-changes mark, how many outputs are images, and whether
any output is a widget JupyterLab cannot restore ("Loading widget..." / "Error displaying widget"). Screenshots
the top of each to ``--out``.

    python scripts/diagnostics/lab_open.py nbs_outputs/03_offline_afsft.ipynb nbs_outputs/04_offline_to_online.ipynb

Needs ``pip install -e .[notebooks,browser]`` (jupyterlab, playwright: the Python package only) and
``/usr/bin/chromium``. About 30 s per notebook on 2 cores.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "lab_open")
    ap.add_argument("--settle", type=float, default=8.0, help="seconds to wait after the notebook renders")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="lab_open_"))
    for nb in args.notebooks:
        shutil.copy(nb, folder / nb.name)
    # "No Kernel": the settings make JupyterLab open notebooks without starting one (a reader without Python)
    settings = folder / ".settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"kernelPreference": {"autoStartDefault": False}}))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={folder}", "--LabApp.news_url=None", "--allow-root",
         f"--LabApp.user_settings_dir={folder / '.settings'}", "--LabApp.workspaces_dir=" + str(folder / ".ws")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    failed = False
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for nb in args.notebooks:
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                for _ in range(60):  # the server needs a few seconds
                    try:
                        page.goto(f"http://127.0.0.1:{port}/lab/tree/{nb.name}")
                        break
                    except Exception:
                        time.sleep(1)
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
                page.wait_for_timeout(args.settle * 1000)
                for button in ("No Kernel", "Select"):  # a kernel dialog, if this JupyterLab still asks
                    if page.locator(f".jp-Dialog button:has-text('{button}')").count():
                        page.locator(f".jp-Dialog button:has-text('{button}')").first.click()
                        page.wait_for_timeout(1000)
                        break
                dirty = page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count() > 0
                images = page.locator(".jp-OutputArea-output img").count()
                broken = page.locator(".jp-OutputArea-output:has-text('Loading widget'), "
                                      ".jp-OutputArea-output:has-text('Error displaying widget')").count()  # fmt: skip
                shot = args.out / f"{nb.stem}-lab.png"
                page.screenshot(path=str(shot))
                print(f"{nb.name}: modified on open: {dirty}; images: {images}; unrendered widgets: {broken}; {shot}")
                failed |= dirty or broken > 0
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
