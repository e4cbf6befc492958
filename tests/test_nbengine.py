"""`papermill --engine vlmq`: the progress line names the notebook and the section of the running cell."""

from __future__ import annotations

import nbformat
import papermill
from papermill.engines import papermill_engines

from vlmq_core.nbengine import SectionEngine, heading, section_names


def test_section_of_each_cell_is_the_last_heading_above_it():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    cells = [
        code("1"),
        md("# 03 · Offline\n\ntext"),
        code("2"),
        md("no heading"),
        md("## 1 · Data\n### 1.1 · More"),
        code("3"),
    ]
    assert section_names(cells) == [None, "03 · Offline", "03 · Offline", "03 · Offline", "1.1 · More", "1.1 · More"]
    assert heading("text\n#not a heading? it is one") == "not a heading? it is one" and heading("plain") is None


def test_papermill_engine_vlmq_shows_sections_on_the_progress_line(tmp_path, capsys):
    assert papermill_engines.get_engine("vlmq") is SectionEngine  # registered through pyproject's entry point
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Demo"),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_markdown_cell("## 2 · Train the critic"),
        nbformat.v4.new_code_cell("y = x + 1\ny"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "demo_nb.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(str(src), str(out), engine_name="vlmq", kernel_name="python3", progress_bar=True)
    err = capsys.readouterr().err
    assert "Executing demo_nb · Demo" in err and "Executing demo_nb · 2 · Train the critic" in err, err[-2000:]
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[-1].outputs[0]["data"]["text/plain"] == "2"  # executed as papermill's own engine would
