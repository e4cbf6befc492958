"""A papermill engine whose progress line names the notebook section being run.

papermill's progress bar counts cells ("Executing: 45%| 9/20"); with ``--engine vlmq`` (registered in
pyproject.toml) it also says which section those cells belong to: the last markdown heading above the running
cell, e.g. ``03_offline_afsft · 2 · Train SFT and AFSFT: 45%| 9/20 [05:12<06:21]``. ``scripts/main.sh`` runs
every notebook with it. Execution itself is papermill's default engine (nbclient), unchanged.
"""

from __future__ import annotations

from pathlib import Path

from papermill.engines import NBClientEngine


def heading(source: str) -> str | None:
    """The last markdown heading of a cell's source (``## 2 · Train`` -> ``2 · Train``), or None."""
    titles = [line.lstrip("#").strip() for line in source.splitlines() if line.startswith("#")]
    return titles[-1] if titles else None


def section_names(cells: list) -> list[str | None]:
    """For each cell, the last markdown heading at or above it (None before the first heading)."""
    names, current = [], None
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            current = heading(cell.get("source", "")) or current
        names.append(current)
    return names


class SectionEngine(NBClientEngine):
    """nbclient execution, with the progress bar's description set to the notebook and the current section."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        names = dict(zip(map(id, nb_man.nb.cells), section_names(nb_man.nb.cells), strict=True))
        stem = Path(str(kwargs.get("input_path") or "")).stem
        default = nb_man.get_cell_description

        def describe(cell, escape_str="papermill_description="):
            section = names.get(id(cell)) or default(cell, escape_str)
            return " · ".join(x for x in (stem, section) if x) or None

        nb_man.get_cell_description = describe
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
