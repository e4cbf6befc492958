"""`vlmq batch`: the grid, the summary's arithmetic, and a real papermill grid that resumes and reports a failure."""

import json
import math
from pathlib import Path

import nbformat
import pytest

from vlmq_core import sweeps
from vlmq_core.cli import main
from vlmq_core.config import ConfigError

PARAMETERS = """x = 1
overrides = []  # e.g. ["train.seed=1"] (a comment with brackets, which papermill's inspector cannot read)
out_dir = ""
metrics_path = "metrics.json"
"""
BODY = """import json, pathlib
seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("train.seed=")), 0)
if x == 3:
    raise ValueError("x is three")
out = pathlib.Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
with open(out / "executions.txt", "a") as f:
    f.write("ran\\n")
record = {"task": "T", "arm": {"success": 0.1 * x + 0.01 * seed, "success_se": 0.05, "return": -x}}
record["configs"] = {"arm": {"success": 9}}
pathlib.Path(metrics_path).write_text(json.dumps(record))
"""


def toy_notebook(folder: Path, parameters: str = PARAMETERS) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters), nbformat.v4.new_code_cell(BODY)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "toy.ipynb"
    nbformat.write(nb, path)
    return path


def test_values_split_at_top_level_commas_and_read_as_yaml():
    assert sweeps.split_values("0,1,2") == [0, 1, 2]
    assert sweeps.split_values("sft, afsft") == ["sft", "afsft"]
    assert sweeps.split_values("[a,b],[c]") == [["a", "b"], ["c"]]
    assert sweeps.split_values("{k: [1,2]},'x,y'") == [{"k": [1, 2]}, "x,y"]
    for bad in ("[a,b", "a,,b", "'open"):
        with pytest.raises(ConfigError):
            sweeps.split_values(bad)


def test_folder_names_are_readable_and_unique():
    assert sweeps.folder_name({"train.seed": 0, "loss.advantage": "td"}) == "train.seed=0,loss.advantage=td"
    assert sweeps.folder_name({}) == "default"
    a, b = sweeps.folder_name({"k": "a b"}), sweeps.folder_name({"k": "a_b"})
    assert a != b and a.startswith("k=a_b-")  # a replaced character brings the hash of the exact value
    lists = sweeps.folder_name({"sections": ["numberline"]}), sweeps.folder_name({"sections": "numberline"})
    assert lists[0].startswith("sections=numberline-") and lists[0] != lists[1]
    assert len(sweeps.folder_name({"k": "v" * 500})) <= 120


def test_grid_is_the_product_and_each_cell_writes_into_its_own_folder(tmp_path):
    nb = toy_notebook(tmp_path)
    grid = sweeps.build_grid([nb], [("x", "1,2")], [("train.seed", "0,1,2")], out=tmp_path / "out", name="g")
    assert grid.root == tmp_path / "out" / "g" and len(grid.cells) == 6
    cell = grid.cells[-1]
    assert cell.coords == {"x": 2, "train.seed": 2}
    assert cell.params == {
        "x": 2,
        "overrides": ["train.seed=2"],
        "out_dir": str(cell.folder / "runs"),
        "metrics_path": str(cell.folder / "metrics.json"),
    }
    assert len({c.folder for c in grid.cells}) == 6 and all(c.state() == "pending" for c in grid.cells)
    # -p overrides and -o combine: the grid's keys come after the given list
    both = sweeps.build_grid([nb], [("overrides", "[train.steps=3]")], [("train.seed", "1")], out=tmp_path)
    assert both.cells[0].params["overrides"] == ["train.steps=3", "train.seed=1"]
    assert both.name == "toy-overrides-train.seed"


@pytest.mark.parametrize(
    ("params", "overrides", "message"),
    [
        ([("y", "1")], [], "has no parameter y"),
        ([("out_dir", "a")], [], "set by the batch"),
        ([("x", "1"), ("x", "2")], [], "given twice"),
    ],
)
def test_bad_grids_are_one_sentence(tmp_path, params, overrides, message):
    nb = toy_notebook(tmp_path)
    with pytest.raises(ConfigError, match=message):
        sweeps.build_grid([nb], params, overrides, out=tmp_path)


def test_a_notebook_without_what_the_batch_needs_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="No notebook at"):
        sweeps.build_grid([tmp_path / "missing.ipynb"], out=tmp_path)
    nb = toy_notebook(tmp_path, "x = 1\nout_dir = ''\n")
    with pytest.raises(ConfigError, match="has no parameter metrics_path"):
        sweeps.build_grid([nb], out=tmp_path)
    assert main(["batch", str(nb), "-p", "x", "1,2", "--list"]) == 2


def test_jobs_follow_cores_and_memory():
    assert sweeps.auto_jobs(8, 4.0, cores=2, free_gb=64) == 1  # two torch jobs on 2 cores only thrash
    assert sweeps.auto_jobs(8, 4.0, cores=16, free_gb=64) == 8
    assert sweeps.auto_jobs(8, 4.0, cores=16, free_gb=10) == 2  # memory-bound
    assert sweeps.auto_jobs(3, 4.0, cores=16, free_gb=64) == 3
    assert sweeps.auto_jobs(8, 4.0, cores=16, free_gb=1) == 1


def fake_done(cell: sweeps.Cell, metrics: dict, wall: float = 10.0) -> None:
    cell.folder.mkdir(parents=True)
    cell.metrics.write_text(json.dumps(metrics))
    (cell.folder / "done.json").write_text(json.dumps({"params": cell.params, "wall_s": wall, "peak_rss_mb": 100}))


def test_summary_means_and_standard_errors_over_seeds(tmp_path):
    nb = toy_notebook(tmp_path)
    grid = sweeps.build_grid([nb], [("x", "1,2")], [("train.seed", "0,1,2")], out=tmp_path / "out", name="g")
    values = {}
    for cell in grid.cells[:5]:  # the last cell (x=2, seed 2) has not run
        s = 0.1 * cell.coords["x"] + 0.05 * cell.coords["train.seed"]
        values.setdefault(cell.coords["x"], []).append(s)
        fake_done(
            cell, {"arm": {"success": s, "success_se": 0.2, "return": 1.0, "steps": 3}, "configs": {"success": 1}}
        )
    summary = sweeps.summarize(grid.cells, sweeps.DEFAULT_METRICS)
    assert summary["metrics"] == ["arm.success", "arm.return"] and summary["seed_axes"] == ["train.seed"]
    assert len(summary["runs"]) == 5 and [p["run"] for p in summary["pending"]] == [grid.cells[5].label]
    g1, g2 = summary["groups"]
    assert g1["coords"] == {"x": 1} and g1["n"] == 3 and g2["n"] == 2
    for g, xs in ((g1, values[1]), (g2, values[2])):
        mean = sum(xs) / len(xs)
        se = math.sqrt(sum((v - mean) ** 2 for v in xs) / (len(xs) - 1) / len(xs))
        assert g["metrics"]["arm.success"]["mean"] == pytest.approx(mean)
        assert g["metrics"]["arm.success"]["se"] == pytest.approx(se)  # across seeds, not the runs' own 0.2
    md = sweeps.summary_markdown(summary)
    assert "mean ± SE over train.seed" in md and "| toy | 1 | 3 | 0.15 ± 0.0289 | 1 ± 0 |" in md
    assert "pending: toy/x=2,train.seed=2" in md
    # one seed per group: the run's own SE where its file has one
    one = sweeps.summarize(grid.cells[:1] + grid.cells[3:4])
    assert one["groups"][0]["n"] == 1 and one["groups"][0]["metrics"]["arm.success"]["se"] == 0.2
    assert math.isnan(one["groups"][0]["metrics"]["arm.return"]["se"])  # no return_se in the file
    fig = sweeps.summary_figure(summary)
    assert [t.y for t in fig.data][0] == pytest.approx((sum(values[1]) / 3, sum(values[2]) / 2)) and fig.data[
        0
    ].error_y.array == pytest.approx((g1["metrics"]["arm.success"]["se"], g2["metrics"]["arm.success"]["se"]))


@pytest.mark.slow
def test_a_papermill_grid_runs_resumes_and_reports_a_failing_cell(tmp_path, monkeypatch, capsys):
    """A 2 x 2 grid through papermill, 2 at a time; the same command again runs nothing; a grid grown by a value
    runs only the new cells, one of which fails: the others finish, the batch exits 1 and names the failure."""
    nb = toy_notebook(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["batch", str(nb), "-p", "x", "1,2", "-o", "train.seed", "0,1", "--out", "out", "--name", "g", "--quiet"]
    assert main([*args, "--jobs", "2"]) == 0
    root = tmp_path / "out" / "g"
    summary = json.loads((root / "summary.json").read_text())
    assert len(summary["runs"]) == 4 and [g["n"] for g in summary["groups"]] == [2, 2]
    assert summary["groups"][1]["metrics"]["arm.success"]["mean"] == pytest.approx(0.205)
    assert summary["groups"][1]["metrics"]["arm.success"]["se"] == pytest.approx(0.005)
    for name in ("summary.md", "summary.html", "plotly.min.js"):
        assert (root / name).is_file()
    assert 'src="plotly.min.js"' in (root / "summary.html").read_text()
    cell = root / "toy" / "x=1,train.seed=0"
    assert json.loads((cell / "done.json").read_text())["peak_rss_mb"] > 10
    assert nbformat.read(cell / "toy.ipynb", as_version=4).cells[1].metadata.papermill.status == "completed"
    capsys.readouterr()

    assert main(args) == 0  # nothing left to run
    assert (cell / "runs" / "executions.txt").read_text() == "ran\n"
    assert "0 ran, 4 already done, 0 failed" in capsys.readouterr().out

    grown = ["batch", str(nb), "-p", "x", "1,2,3", "-o", "train.seed", "0,1", "--out", "out", "--name", "g", "--quiet"]
    assert main(grown) == 1
    out = capsys.readouterr().out
    assert "0 ran, 4 already done, 2 failed" in out and "failed: toy/x=3,train.seed=0, toy/x=3,train.seed=1" in out
    failed = json.loads((root / "toy" / "x=3,train.seed=0" / "failed.json").read_text())
    assert "ValueError: x is three" in failed["error"]


def _ours(folder: Path) -> list[int]:
    """Processes whose command line or working directory is inside `folder` (the batch, its workers, kernels)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            cwd = str((proc / "cwd").resolve())
        except OSError:
            continue
        if str(folder) in cmd or cwd.startswith(str(folder)):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_stopping_a_batch_leaves_no_kernel_behind_and_its_cells_run_again(tmp_path):
    """`kill` (SIGTERM) on a batch in the middle of two sleeping cells: the workers and their kernels exit, nothing
    is marked done or failed, and the cells are pending for the next run."""
    import subprocess
    import sys
    import time

    global BODY
    nb = tmp_path / "nb"
    nb.mkdir()
    body, BODY = BODY, "import time\ntime.sleep(120)\n" + BODY
    try:
        path = toy_notebook(nb)
    finally:
        BODY = body
    cmd = [sys.executable, "-m", "vlmq_core.cli", "batch", str(path), "-p", "x", "1,2", "--jobs", "2", "--quiet"]
    cmd += ["--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(_ours(tmp_path)) < 5 and time.monotonic() < deadline:  # the batch, 2 workers, 2 kernels
        time.sleep(0.5)
    time.sleep(3)  # the kernels are executing
    assert len(_ours(tmp_path)) >= 5
    proc.terminate()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _ours(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ours(tmp_path) == []
    grid = sweeps.build_grid([path], [("x", "1,2")], out=tmp_path / "out")
    assert [c.state() for c in grid.cells] == ["pending", "pending"]


def test_columns_drop_the_prefix_every_metric_shares():
    keys = ["results.m (x).NumberLine.agent/text.success", "results.m (x).Blackjack.agent/text.valid"]
    assert list(sweeps.short_names(keys).values()) == ["NumberLine.agent/text.success", "Blackjack.agent/text.valid"]
    assert sweeps.short_names(["afsft.success", "sft.success"]) == {
        "afsft.success": "afsft.success",
        "sft.success": "sft.success",
    }
    assert sweeps.short_names(["a.b.success"]) == {"a.b.success": "success"}
