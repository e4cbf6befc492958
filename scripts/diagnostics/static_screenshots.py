"""What a viewer without JavaScript shows of an executed notebook: nbconvert's HTML opened in headless Chromium
with JavaScript off, screenshots of the page's top and of each figure, and a count of figures against pictures.

    python scripts/diagnostics/static_screenshots.py nbs_outputs/03_offline_afsft.ipynb --out docs/images --figures 2

Writes ``<out>/<notebook>-nojs-top.png`` and ``<out>/<notebook>-nojs-figure-<i>.png`` (the first ``--figures``
figures) and prints one line per notebook: its size, its plotly figures, and the pictures the page shows.
Needs nbconvert and playwright (the Python package only, never ``playwright install``) and ``/usr/bin/chromium``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
PLOTLY = "application/vnd.plotly.v1+json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--figures", type=int, default=1, help="figures to screenshot per notebook (default 1)")
    args = parser.parse_args()
    import nbconvert
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(java_script_enabled=False, viewport={"width": 1100, "height": 900}).new_page()
        for path in args.notebooks:
            nb = json.loads(path.read_text())
            figures = sum(PLOTLY in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
            html, _ = nbconvert.HTMLExporter().from_filename(str(path))
            page_file = Path(tmp) / f"{path.stem}.html"
            page_file.write_text(html)
            page.goto(page_file.as_uri())
            pictures = page.locator(".jp-RenderedImage img[src^='data:image/png']")
            stem = path.stem
            page.screenshot(path=str(args.out / f"{stem}-nojs-top.png"))
            for i in range(min(args.figures, pictures.count())):
                pictures.nth(i).screenshot(path=str(args.out / f"{stem}-nojs-figure-{i + 1}.png"))
            size, shown = path.stat().st_size / 2**20, pictures.count()
            print(f"{path}: {size:.2f} MB, {figures} plotly figures, {shown} pictures shown without JavaScript")
        browser.close()


if __name__ == "__main__":
    main()
