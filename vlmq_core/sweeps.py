"""Papermill grids: run notebooks over every combination of parameter values, then one summary across the runs.

    vlmq batch notebooks/03_offline_afsft.ipynb -o train.seed 0,1 -o loss.actor sft,afsft
    vlmq batch notebooks/04_offline_to_online.ipynb -p sections "[numberline]" -o train.seed 0,1,2 --name nl-seeds

``-p NAME V1,V2`` sets a notebook parameter (values read as YAML, split at top-level commas: ``"[a,b],[c]"`` is two
lists); ``-o KEY V1,V2`` appends ``KEY=V`` to the notebook's ``overrides`` list (any run-config key). Each cell of
the grid gets its own folder ``<out>/<name>/<notebook>/<coordinates>/`` holding the executed notebook, its
``metrics.json`` (the notebook's ``metrics_path``), its runs and datasets (the notebook's ``out_dir``, when it
has one), a
``log.txt`` of the kernel's output, and ``done.json`` (parameters, wall time, peak memory) once it succeeded
(``failed.json`` otherwise). The same command again skips finished cells, so a killed batch resumes and a grid
grows by adding values. Executed notebooks hold each figure as plotly JSON and a PNG, no plotly.js
(:mod:`vlmq_core.render`). Cells run in parallel where the cores and free memory allow (``--jobs``); each job gets
an equal share of the cores. ``summary.md``, ``summary.json`` and ``summary.html`` (a plotly figure) collect the
metrics across runs: one row per cell, and the mean and standard error over seeds (coordinates whose name has
``seed`` in it) when the grid has any.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlmq_core import hardware
from vlmq_core.config import ConfigError, json_text, write_text_atomic

RESERVED = ("out_dir", "metrics_path")  # set by the batch for every cell (out_dir where the notebook has one)
DEFAULT_METRICS = ("*success", "*valid", "*return")  # dotted keys of the metrics files shown in the summary
SE_SUFFIX = "_se"


# ---- the grid ------------------------------------------------------------------------------------------


def split_values(text: str) -> list[Any]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: split at commas outside brackets, braces and quotes, each part read as YAML
    (``"[a,b],[c]"`` -> ``[["a", "b"], ["c"]]``; ``"sft,afsft"`` -> ``["sft", "afsft"]``)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if depth != 0 or quote:
        raise ConfigError(f"Unbalanced brackets or quotes in the values {text!r}: write lists as [a,b] and quote text.")
    values = []
    for part in parts:
        part = part.strip()
        if not part:
            raise ConfigError(f"An empty value in {text!r}: separate values with single commas.")
        try:
            values.append(yaml.safe_load(part))
        except yaml.YAMLError as e:
            raise ConfigError(f"The value {part!r} is not valid YAML ({e.problem}); quote it.") from None
    return values


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _short(value: Any) -> str:
    """A value as a folder name shows it: lists as ``a+b``, the rest as text."""
    if isinstance(value, list):
        return "+".join(_short(v) for v in value)
    return _text(value)


def folder_name(coords: dict[str, Any]) -> str:
    """A cell's folder: ``key=value`` pairs joined by ``,`` (lists as ``a+b``), and a hash of the exact coordinates
    when characters outside ``[A-Za-z0-9._=+,-]`` had to become ``_`` or the name is long, so it stays unique."""
    if not coords:
        return "default"
    shown = ",".join(f"{k}={_short(v)}" for k, v in coords.items())
    safe = re.sub(r"[^A-Za-z0-9._=+,-]", "_", shown)
    exact = json.dumps(coords, sort_keys=True)
    if safe != shown or len(safe) > 120 or any(isinstance(v, list | dict) for v in coords.values()):
        safe = f"{safe[:100]}-{hashlib.sha1(exact.encode()).hexdigest()[:8]}"
    return safe


@dataclass(frozen=True)
class Cell:
    """One run of one notebook: its grid coordinates and the papermill parameters they give."""

    notebook: Path
    coords: dict[str, Any]  # grid name -> value; -o keys are named as the config key
    params: dict[str, Any]  # papermill parameters, out_dir and metrics_path included
    folder: Path

    @property
    def output(self) -> Path:
        return self.folder / self.notebook.name

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def label(self) -> str:
        return f"{self.notebook.stem}/{self.folder.name}"

    def state(self) -> str:
        """``done`` (done.json present, for these parameters), ``failed`` or ``pending``."""
        done = self.folder / "done.json"
        if done.is_file():
            try:
                if json.loads(done.read_text()).get("params") == json.loads(json_text(self.params)):
                    return "done"
            except json.JSONDecodeError:
                pass
        return "failed" if (self.folder / "failed.json").is_file() else "pending"


def notebook_parameters(notebook: Path) -> list[str]:
    """The names its ``parameters`` cell assigns, in order (read with ``ast``; papermill's own inspector misreads
    comments holding brackets). ConfigError when the notebook is not JSON or has no such cell."""
    import ast

    try:
        cells = json.loads(Path(notebook).read_text())["cells"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise ConfigError(f"{notebook} is not a readable notebook ({e}); give an .ipynb file.") from None
    for cell in cells:
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            tree = ast.parse(source)
            names = []
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if isinstance(node, ast.Assign | ast.AnnAssign):
                    names += [t.id for t in targets if isinstance(t, ast.Name)]
            return names
    raise ConfigError(f"{notebook} has no cell tagged `parameters`, so papermill cannot set its parameters.")


@dataclass(frozen=True)
class Batch:
    """A grid of runs: its name, its folder (``<out>/<name>``) and its cells."""

    name: str
    root: Path
    cells: list[Cell]


def build_grid(
    notebooks: Sequence[str | os.PathLike],
    params: Sequence[tuple[str, str]] = (),
    overrides: Sequence[tuple[str, str]] = (),
    out: str | os.PathLike = "nbs_outputs/batch",
    name: str | None = None,
) -> Batch:
    """Every notebook times every combination of the ``-p`` and ``-o`` values, each cell in its own folder.

    Raises ConfigError for a missing notebook, a parameter the notebook does not declare, a reserved parameter,
    or a name given twice.
    """
    axes: list[tuple[str, list[Any], bool]] = []  # (name, values, is a config override)
    names = [k for k, _ in [*params, *overrides]]
    for key in names:
        if names.count(key) > 1:
            raise ConfigError(f"{key} is given twice: give all its values once, as {key} v1,v2.")
    for key, text in params:
        if key in RESERVED:
            raise ConfigError(f"{key} is set by the batch (each cell writes into its own folder); drop -p {key}.")
        axes.append((key, split_values(text), False))
    for key, text in overrides:
        axes.append((key, split_values(text), True))
    paths = [Path(nb) for nb in notebooks]
    declared: dict[Path, list[str]] = {}
    for nb in paths:
        if not nb.is_file():
            raise ConfigError(f"No notebook at {nb}: give the path of an .ipynb file (notebooks/ has them).")
        declared[nb] = notebook_parameters(nb)
        wanted = [k for k, _, is_override in axes if not is_override] + ["metrics_path"]
        wanted += ["overrides"] if overrides else []
        missing = [k for k in wanted if k not in declared[nb]]
        if missing:
            raise ConfigError(
                f"{nb} has no parameter {', '.join(missing)} in its parameters cell (it has: "
                f"{', '.join(declared[nb]) or 'none'}); vlmq batch needs metrics_path, and overrides for -o."
            )
    if name is None:
        name = "-".join([*(p.stem.split("_")[0] for p in paths), *(k for k, _, _ in axes)]) or "default"
    root = Path(out) / name
    cells = []
    for nb in paths:
        for combo in itertools.product(*(values for _, values, _ in axes)):
            coords = {k: v for (k, _, _), v in zip(axes, combo, strict=True)}
            folder = root / nb.stem / folder_name(coords)
            cell_params: dict[str, Any] = {}
            extra = []
            for (k, _, is_override), v in zip(axes, combo, strict=True):
                if is_override:
                    extra.append(f"{k}={_text(v)}")
                else:
                    cell_params[k] = v
            if extra:
                base = cell_params.get("overrides", [])
                if not isinstance(base, list):
                    raise ConfigError(f"-p overrides must be a list, got {base!r}.")
                cell_params["overrides"] = [*base, *extra]
            cell_params["metrics_path"] = str(folder / "metrics.json")
            if "out_dir" in declared[nb]:  # the runs and datasets a notebook writes go into the cell's folder too
                cell_params["out_dir"] = str(folder / "runs")
            cells.append(Cell(nb, coords, cell_params, folder))
    return Batch(name, root, cells)


# ---- running -------------------------------------------------------------------------------------------


def auto_jobs(pending: int, mem_per_job_gb: float, cores: int | None = None, free_gb: float | None = None) -> int:
    """Parallel cells: at most one per 2 cores (torch uses them all; two jobs on 2 cores only thrash), at most as
    many as free memory holds at `mem_per_job_gb` each, at least 1."""
    cores = cores or os.cpu_count() or 1
    free_gb = hardware.available_memory_gb() if free_gb is None else free_gb
    return max(1, min(pending, cores // 2, int(free_gb // mem_per_job_gb)))


def _launch(cell: Cell, kernel: str, threads: int, cwd: Path) -> subprocess.Popen:
    cell.folder.mkdir(parents=True, exist_ok=True)
    (cell.folder / "failed.json").unlink(missing_ok=True)
    spec = {"notebook": str(cell.notebook), "output": str(cell.output), "params": cell.params}
    write_text_atomic(cell.folder / "cell.json", json_text(spec | {"kernel": kernel, "cwd": str(cwd)}, indent=1))
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = open(cell.folder / "log.txt", "w")  # noqa: SIM115 (closed when the process is reaped)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmq_core.sweeps", str(cell.folder)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,  # Ctrl-C reaches us; we stop the cell's whole group (its kernel too)
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the cell's process group (the worker unwinds and papermill shuts its kernel down), then
    SIGKILL if it is still there after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.log.close()  # type: ignore[attr-defined]


@dataclass
class BatchResult:
    """What ``run_batch`` did: cells run, skipped (already done) and failed, and where the summary is."""

    name: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    summary: Path | None = None


def run_batch(
    batch: Batch,
    jobs: int | None = None,
    mem_per_job_gb: float = 4.0,
    kernel: str = "python3",
    metrics: Sequence[str] = DEFAULT_METRICS,
    progress: bool = True,
    cwd: str | os.PathLike = ".",
) -> BatchResult:
    """Run every cell not already done (``jobs`` at a time; None: ``auto_jobs``), then write the summary next to
    the cells' folders. A failed cell is reported with its log and does not stop the others."""
    from tqdm.auto import tqdm

    result = BatchResult(batch.name)
    pending = []
    for cell in batch.cells:
        (result.skipped if cell.state() == "done" else pending).append(cell)
    jobs = jobs or auto_jobs(len(pending), mem_per_job_gb)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    cwd = Path(cwd).resolve()
    bar = tqdm(
        total=len(batch.cells),
        initial=len(result.skipped),
        desc=f"batch {batch.name}",
        unit="run",
        disable=not progress,
    )
    running: dict[str, tuple[Cell, subprocess.Popen, float]] = {}
    queue = list(pending)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # `kill` acts as Ctrl-C
    try:
        while queue or running:
            while queue and len(running) < jobs:
                cell = queue.pop(0)
                running[cell.label] = (cell, _launch(cell, kernel, threads, cwd), time.monotonic())
            shown = f"running {', '.join(running)}" if running else ""
            if shown != getattr(bar, "postfix", None):  # only when it changes (a log file gets one line per change)
                bar.set_postfix_str(shown, refresh=True)
            time.sleep(0.2)
            for label, (cell, proc, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                proc.log.close()  # type: ignore[attr-defined]
                del running[label]
                bar.update(1)
                took = time.monotonic() - started
                if cell.state() == "done":
                    result.ran.append(label)
                    bar.write(f"done   {label} ({took:.0f} s)")
                else:
                    result.failed.append(label)
                    reason = _failure(cell)
                    bar.write(f"FAILED {label} ({took:.0f} s): {reason} (log: {cell.folder / 'log.txt'})")
    except KeyboardInterrupt:
        for _, proc, _ in running.values():
            _stop(proc)
        bar.close()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    bar.close()
    result.summary = write_summary(batch.root, batch.cells, metrics)
    return result


def _failure(cell: Cell) -> str:
    failed = cell.folder / "failed.json"
    if failed.is_file():
        return json.loads(failed.read_text()).get("error", "unknown error")
    return "the run stopped before finishing (killed?)"


def run_cell(folder: Path) -> int:
    """The worker behind each cell (``python -m vlmq_core.sweeps CELL_FOLDER``): papermill executes the notebook,
    then done.json (parameters, wall time, the kernel's peak memory) or failed.json is written."""
    import resource

    import papermill

    signal.signal(signal.SIGTERM, _interrupt)  # the batch stopping us: unwind, so papermill shuts the kernel down
    spec = json.loads((folder / "cell.json").read_text())
    started = time.time()
    try:
        papermill.execute_notebook(
            spec["notebook"],
            spec["output"],
            parameters=spec["params"],
            kernel_name=spec["kernel"],
            cwd=spec["cwd"],
            progress_bar=False,
            log_output=True,
        )
    except Exception as e:  # the notebook's own error: recorded for the summary, the batch goes on
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        if type(e).__name__ == "PapermillExecutionError":
            error = f"{e.ename}: {e.evalue} (cell {e.exec_count})"
        write_text_atomic(folder / "failed.json", json_text({"error": error, "params": spec["params"]}, indent=1))
        print(error, file=sys.stderr)
        return 1
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the kernel: our only child
    record = {"params": spec["params"], "wall_s": time.time() - started, "peak_rss_mb": peak_mb}
    write_text_atomic(folder / "done.json", json_text(record, indent=1))
    return 0


# ---- the summary ---------------------------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"afsft": {"success": 0.7}}`` -> ``{"afsft.success": 0.7}`` (lists and scalars are leaves)."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in flatten(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}


def select_metrics(flat: dict[str, Any], patterns: Iterable[str]) -> list[str]:
    """The numeric keys matching any pattern (fnmatch, e.g. ``*success``), configs excluded, in file order."""
    patterns = list(patterns)
    return [
        k
        for k, v in flat.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and not k.startswith("configs.")
        and any(fnmatch.fnmatchcase(k, p) for p in patterns)
    ]


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def summarize(cells: Sequence[Cell], patterns: Sequence[str] = DEFAULT_METRICS) -> dict[str, Any]:
    """Rows per finished cell and, when some coordinate names a seed, mean and standard error over seeds.

    Returns ``{"metrics": keys, "axes": names, "seed_axes": names, "runs": [...], "groups": [...],
    "failed": [...], "pending": [...]}``; a run's row has its coordinates, its metrics, wall time and peak memory;
    a group's row has the other coordinates, ``n`` and per metric ``{"mean", "se"}`` (the SE across seeds; with a
    single run, the run's own ``<metric>_se`` when its metrics file has one, else null).
    """
    axes = list(dict.fromkeys(k for c in cells for k in c.coords))
    seed_axes = [a for a in axes if "seed" in a.lower()]
    runs, failed, pending, keys = [], [], [], []
    for cell in cells:
        state = cell.state()
        if state != "done" or not cell.metrics.is_file():
            (failed if state == "failed" else pending).append({"run": cell.label, **cell.coords})
            continue
        flat = flatten(json.loads(cell.metrics.read_text()))
        done = json.loads((cell.folder / "done.json").read_text())
        chosen = select_metrics(flat, patterns)
        keys += [k for k in chosen if k not in keys]
        runs.append(
            {
                "run": cell.label,
                "notebook": cell.notebook.stem,
                "coords": cell.coords,
                "metrics": {k: flat[k] for k in chosen} | {k: flat[k] for k in flat if k.endswith(SE_SUFFIX)},
                "wall_s": done["wall_s"],
                "peak_rss_mb": done.get("peak_rss_mb"),
            }
        )
    groups: dict[str, dict[str, Any]] = {}
    for row in runs:
        rest = {k: v for k, v in row["coords"].items() if k not in seed_axes}
        key = row["notebook"] + json.dumps(rest, sort_keys=True)
        g = groups.setdefault(key, {"notebook": row["notebook"], "coords": rest, "rows": []})
        g["rows"].append(row)
    group_rows = []
    for g in groups.values():
        out = {"notebook": g["notebook"], "coords": g["coords"], "n": len(g["rows"]), "metrics": {}}
        for k in keys:
            values = [r["metrics"][k] for r in g["rows"] if isinstance(r["metrics"].get(k), int | float)]
            if not values:
                continue
            mean, se = _mean_se([float(v) for v in values])
            if len(values) == 1:
                own = g["rows"][0]["metrics"].get(k + SE_SUFFIX)
                se = float(own) if isinstance(own, int | float) else math.nan
            out["metrics"][k] = {"mean": mean, "se": se}
        group_rows.append(out)
    for row in runs:  # the *_se siblings were kept for the groups; the run rows show the chosen keys only
        row["metrics"] = {k: v for k, v in row["metrics"].items() if k in keys}
    return {
        "metrics": keys,
        "axes": axes,
        "seed_axes": seed_axes,
        "runs": runs,
        "groups": group_rows,
        "failed": failed,
        "pending": pending,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return "" if v is None else _text(v)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Column names: the metric keys without the dotted components all of them start with
    (``results.<model>.NumberLine.agent/text.success`` -> ``NumberLine.agent/text.success`` when every key has
    that model); a single key keeps its last component."""
    parts = [k.split(".") for k in keys]
    common = 0
    while parts and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return {k: ".".join(p[common:]) for k, p in zip(keys, parts, strict=True)}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: the groups (mean ± SE over seeds, or the run's own SE), then every run. Metric
    columns drop the dotted prefix every key shares (``short_names``)."""
    axes, keys, seed_axes = summary["axes"], summary["metrics"], summary["seed_axes"]
    names = short_names(keys)
    lines = []
    other = [a for a in axes if a not in seed_axes]
    if summary["groups"]:
        title = f"mean ± SE over {', '.join(seed_axes)}" if seed_axes else "each run (± its own SE where it has one)"
        lines += [f"### {title}", ""]
        head = ["notebook", *other, "n", *(names[k] for k in keys)]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for g in summary["groups"]:
            cells = [g["notebook"], *(_fmt(g["coords"].get(a)) for a in other), str(g["n"])]
            for k in keys:
                m = g["metrics"].get(k)
                cells.append(
                    "" if m is None else _fmt(m["mean"]) + ("" if math.isnan(m["se"]) else f" ± {_fmt(m['se'])}")
                )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### runs", ""]
    head = ["run", *axes, *(names[k] for k in keys), "wall s", "peak MB"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["runs"]:
        cells = [r["run"], *(_fmt(r["coords"].get(a)) for a in axes), *(_fmt(r["metrics"].get(k)) for k in keys)]
        peak = r["peak_rss_mb"]
        cells += [f"{r['wall_s']:.0f}", "" if peak is None else f"{peak:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for state in ("failed", "pending"):
        if summary[state]:
            lines += ["", f"{state}: " + ", ".join(r["run"] for r in summary[state])]
    return "\n".join(lines) + "\n"


def summary_figure(summary: dict[str, Any]):
    """One panel per metric: a bar per group (mean over seeds) with its standard error as the error bar."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys = summary["metrics"]
    seed_axes = summary["seed_axes"]
    names = short_names(keys)
    titles = [names[k] for k in keys]
    fig = make_subplots(rows=max(1, len(keys)), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.06)
    labels = [
        " ".join([g["notebook"].split("_")[0], *(f"{k}={_text(v)}" for k, v in g["coords"].items())])
        for g in summary["groups"]
    ]
    for i, k in enumerate(keys, start=1):
        ys = [g["metrics"].get(k, {}).get("mean") for g in summary["groups"]]
        ses = [g["metrics"].get(k, {}).get("se") for g in summary["groups"]]
        ses = [None if s is None or math.isnan(s) else s for s in ses]
        ns = [g["n"] for g in summary["groups"]]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=ys,
                error_y={"type": "data", "array": ses, "visible": True},
                customdata=ns,
                name=names[k],
                showlegend=False,
                hovertemplate=f"%{{x}}<br>{names[k]} %{{y:.3g}}<br>runs %{{customdata}}<extra></extra>",
            ),
            row=i,
            col=1,
        )
    over = f"mean ± SE over {', '.join(seed_axes)}" if seed_axes else "error bars: each run's own SE"
    fig.update_layout(title=f"Batch summary ({over})", template="plotly_white", height=180 + 220 * max(1, len(keys)))
    return fig


def write_summary(root: Path, cells: Sequence[Cell], metrics: Sequence[str] = DEFAULT_METRICS) -> Path:
    """Write ``summary.md``, ``summary.json`` and ``summary.html`` (plotly.js beside it, once) into `root`."""
    summary = summarize(cells, metrics)
    write_text_atomic(root / "summary.json", json_text(summary, indent=1))
    md = root / "summary.md"
    write_text_atomic(md, summary_markdown(summary))
    html = summary_figure(summary).to_html(include_plotlyjs="directory", full_html=True)
    write_text_atomic(root / "summary.html", html)
    if not (root / "plotly.min.js").is_file():
        from plotly.offline import get_plotlyjs

        write_text_atomic(root / "plotly.min.js", get_plotlyjs())
    return md


if __name__ == "__main__":
    sys.exit(run_cell(Path(sys.argv[1])))
