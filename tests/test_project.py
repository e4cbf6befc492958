"""Project consistency: conda env == pyproject, README commands, CI entry point, paper map, notebooks."""

import importlib
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}


def span(xs: list[float]) -> str:
    """Shares as the README quotes them: "0-3%", or one number where the ends are equal ("63%")."""
    return f"{max(xs):.0%}" if min(xs) == max(xs) else f"{100 * min(xs):.0f}-{max(xs):.0%}"


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = dict(_split(r) for r in project["dependencies"] + extras["notebooks"] + extras["dev"] + extras["web"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for r in dep["pip"]:
                if not r.startswith("-e"):
                    listed.update([_split(r)])
            continue
        name, spec = _split(dep)
        if name not in ("python", "pip"):
            listed[CONDA_TO_PIP.get(name, name)] = spec
    assert listed == wanted


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/main.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_main_sh_runs_every_notebook_by_number():
    script = (ROOT / "scripts" / "main.sh").read_text()
    arrays = re.findall(r"^(?:all|extra)=\(([^)]*)\)", script, flags=re.M)
    named = {name for names in arrays for name in names.split()}
    assert named == {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert "bash scripts/main.sh 06" in (ROOT / "README.md").read_text()


def test_paper_map_points_at_code_that_exists():
    text = (ROOT / "docs" / "PAPER_MAP.md").read_text()
    refs = re.findall(r"`(vlmq_core/[\w/]+)\.py::([\w.]+)`", text)
    refs += [
        (path, name)
        for path, rest in re.findall(r"`(vlmq_core/[\w/]+)\.py::[\w.]+`((?:, `[\w.]+`)+)", text)
        for name in re.findall(r"`([\w.]+)`", rest)
    ]
    assert len(refs) >= 20
    for path, name in refs:
        obj = importlib.import_module(path.replace("/", "."))
        for part in name.split("."):
            obj = getattr(obj, part)
    for eq in range(1, 8):
        assert f"| Eq. {eq} |" in text


def test_source_notebooks_have_a_parameters_cell_and_no_outputs():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), path.name
        assert not any(c.get("outputs") for c in code), f"{path.name} has outputs; executed copies go to nbs_outputs/"
        src = "\n".join("".join(c["source"]) for c in code)
        assert "import vlmq_core" in src or "from vlmq_core" in src
        assert not re.search(r"^class ", src, re.M), f"{path.name} defines a class: move it into vlmq_core"


def test_readme_results_match_the_committed_metrics():
    """The README's results table quotes the committed executed notebook's metrics file, not older numbers."""
    metrics = json.loads((ROOT / "nbs_outputs" / "03_offline_afsft.metrics.json").read_text())
    for key in ("task", "model", "hardware", "episodes"):
        assert metrics[key], key
    readme = (ROOT / "README.md").read_text()
    rows = {"base": "| base model, prompted |", "sft": "| SFT (Eq. 3) |", "afsft": "| AFSFT (Eq. 4-7"}
    for run, start in rows.items():
        line = next(x for x in readme.splitlines() if x.startswith(start))
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")[1:4]]
        want = metrics[run]
        assert cells[:2] == [f"{want['success']:.0%}", f"{want['valid']:.0%}"], (run, cells)
        assert float(cells[2]) == round(want["return"], 2), (run, cells)


def test_readme_online_results_match_the_committed_metrics():
    """The README's offline-to-online table quotes notebook 04's committed metrics files, row by row."""
    metrics = json.loads((ROOT / "nbs_outputs" / "04_offline_to_online.metrics.json").read_text())
    babyai = ROOT / "nbs_outputs" / "04_offline_to_online_babyai.metrics.json"  # its own run (the main job skips it)
    metrics.setdefault("babyai", json.loads(babyai.read_text())["babyai"])
    readme = (ROOT / "README.md").read_text()
    rows = {
        ("numberline", "offline"): "| NumberLine | notebook 03's AFSFT run",
        ("numberline", "online"): "| NumberLine | continued online",
        ("blackjack", "offline"): "| Blackjack | offline phase",
        ("blackjack", "online"): "| Blackjack | then online",
        ("babyai", "base"): "| BabyAI GoToLocal | base model",
        ("babyai", "online"): "| BabyAI GoToLocal | online from nothing",
    }
    for (task, name), start in rows.items():
        line = next(x for x in readme.splitlines() if x.startswith(start))
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")[2:]]
        want, record = metrics[task][name], metrics[task]
        digits = 1 if want["episodes"] >= 1000 else 0
        assert cells[0] == f"{want['success']:.{digits}%} (SE {100 * want['success_se']:.1f})", (task, name, cells)
        assert cells[1] == f"{want['valid']:.0%}" and float(cells[2]) == round(want["return"], 2), (task, name, cells)
        assert int(cells[3]) == int(want["episodes"]), (task, name, cells)
        if name == "online":
            assert cells[4:] == [str(record["env_steps"]), str(record["updates"])], (task, cells)


def test_readme_prose_results_of_notebooks_01_02_03_and_05_match_their_metrics():
    """The README's paragraphs on notebooks 01, 02, 03 (Blackjack) and 05 quote their committed metrics files."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    survey = json.loads((ROOT / "nbs_outputs" / "02_dataset_building.metrics.json").read_text())["survey"]
    rows = {task: {r["source"]: r for r in record["sources"]} for task, record in survey.items()}
    wins = [rows[t]["random"]["success"] for t in ("NumberLine", "BabyAI-GoToLocal", "Blackjack")]
    assert (
        "random valid moves win {:.0%} of NumberLine, {:.0%} of BabyAI and {:.0%} of Blackjack".format(*wins) in readme
    )
    assert rows["EZPoints"]["random"]["success"] == rows["Points24"]["random"]["success"] == 0
    p24 = [rows["Points24"][f"oracle@{r}"]["success"] for r in ("0", "0.25", "0.5")]
    assert (
        "wins {:.0%}, {:.0%} and {:.0%} of Points24 (limit {:.1%})".format(*p24, survey["Points24"]["limit"]) in readme
    )
    bj = json.loads((ROOT / "nbs_outputs" / "03_offline_afsft_blackjack.metrics.json").read_text())
    sft, afsft = (f"{bj[k]['success']:.0%} (SE {100 * bj[k]['success_se']:.1f})" for k in ("sft", "afsft"))
    won = f"({bj['dataset']['buffer/success_frac']:.1%} won), SFT wins {sft}"
    assert won in readme and f"AFSFT {afsft} of 100" in readme
    agent = [r["valid"] for t in rows.values() for s, r in t.items() if s.endswith("/agent")]
    assert f"are {span(agent)} valid with `agent` prompting" in readme
    m01 = json.loads((ROOT / "nbs_outputs" / "01_base_model_prompting.metrics.json").read_text())
    (tasks,) = m01["results"].values()
    agent = [runs["agent/text"]["valid"] for runs in tasks.values()]
    assert f"{span(agent)} valid replies on every task with `agent` prompting" in readme
    gym = [runs["min_format/text"]["valid"] for task, runs in tasks.items() if not task.startswith("BabyAI")]
    assert f"{span(gym)} valid on Gym Cards" in readme
    babyai = tasks["BabyAI-GoToLocal"]["min_format/text"]
    assert f"{babyai['valid']:.0%} on BabyAI" in readme
    assert f"({babyai['success']:.0%} success, SE {100 * babyai['success_se']:.0f}," in readme
    r = json.loads((ROOT / "nbs_outputs" / "05_maxq_ablation.metrics.json").read_text())["results"]

    def score(arm: str) -> str:
        return f"{r[arm]['success']:.0%} (SE {100 * r[arm]['success_se']:.0f}"

    assert f"AFSFT {score('afsft')}), SFT {score('sft')}), the max-Q actor {score('maxq')}, valid" in readme
    assert f"valid {r['maxq']['valid']:.0%}) with this project's" in readme
    assert r["maxq_paper_init"]["success"] == r["maxq_paper_init"]["valid"] == 0 and "and 0% with the paper's" in readme


REMOVED_OPTIONS = {"loss.advantage=mc": "8b27177"}
"""Overrides of options that a finding tried and a later commit removed, with the commit to run them at."""


def test_overrides_quoted_in_the_docs_are_valid_config_keys():
    """Every dotted `key=value` the README and docs/FINDINGS.md tell a user to type parses as a config override."""
    from vlmq_core.run import load_config

    quoted = set()
    for doc in ("README.md", "docs/FINDINGS.md"):
        quoted |= set(re.findall(r"(?<![\w./-])([a-z_]+\.[a-z_.0-9]+=[^\s`\"\]]+)", (ROOT / doc).read_text()))
    quoted.discard("no.such.key=1")  # the README's example of an error
    findings = (ROOT / "docs" / "FINDINGS.md").read_text()
    for override, commit in REMOVED_OPTIONS.items():  # quoted with the commit that still has them
        assert f"at {commit}" in findings, f"docs/FINDINGS.md quotes {override} without the commit that has it"
        quoted.discard(override)
    assert len(quoted) >= 10, quoted
    for override in sorted(quoted):
        load_config(None, [override])  # raises ConfigError naming the key if the docs drifted


@pytest.mark.parametrize("task", ["NumberLine", "EZPoints", "Points24", "Blackjack", "MiniWoB"])
def test_every_gym_cards_task_has_notebook_03_configs_that_differ_only_in_the_method(task, monkeypatch):
    """Notebook 03's `task` parameter: each Gym Cards task has an SFT and an AFSFT config on the same data, play and
    evaluation (notebook_configs checks), differing only in run_dir, the critic and the loss; so has notebook 06's
    MiniWoB pair (its sources name their own tasks)."""
    from vlmq_core import config
    from vlmq_core.experiments import notebook_configs, task_config_files

    monkeypatch.chdir(ROOT)
    cfgs = notebook_configs(task_config_files(task))
    sft, afsft = cfgs["sft"], cfgs["afsft"]
    assert afsft.collect.task.startswith(task) and afsft.loss.actor == "afsft" and sft.loss.actor == "sft"
    differ = {key.split(".")[0] for key in config.differences(sft, afsft)}  # sections of the whole RunConfig
    assert differ <= {"run_dir", "critic", "loss"}, differ
    assert sft.run_dir != afsft.run_dir and Path(afsft.data.path).parent.name == task.lower()


def test_the_gpu_miniwob_pair_covers_all_27_tasks_on_the_papers_schedule(monkeypatch):
    """configs/miniwob_gpu_*.yaml (notebook 06 on a GPU, configs/params/06_miniwob_gpu.yaml): the paper's 27 click
    tasks, each with random, partial and agent sources, the demonstrator only where one exists; Table 3's MiniWoB
    schedule; the two runs differ only in the method."""
    import yaml

    from vlmq_core import config
    from vlmq_core.envs import MINIWOB_TASKS
    from vlmq_core.envs.miniwob import DEMONSTRATIONS
    from vlmq_core.experiments import notebook_configs

    monkeypatch.chdir(ROOT)
    params = yaml.safe_load((ROOT / "configs" / "params" / "06_miniwob_gpu.yaml").read_text())
    cfgs = notebook_configs(params["config_files"])
    sft, afsft = cfgs["sft"], cfgs["afsft"]
    assert {key.split(".")[0] for key in config.differences(sft, afsft)} <= {"run_dir", "critic", "loss"}
    by_task: dict[str, set[str]] = {}
    for source in afsft.data.sources:
        by_task.setdefault(source.task, set()).add(source.strategy)
    assert list(by_task) == [f"MiniWoB-{t}" for t in MINIWOB_TASKS]
    for task, strategies in by_task.items():
        demo = task.removeprefix("MiniWoB-") in DEMONSTRATIONS
        assert strategies == {"random", "partial", "agent"} | ({"oracle"} if demo else set()), task
    t = afsft.train
    assert (t.steps, t.batch_size, t.grad_accum, t.lr_critic, t.tau) == (50 * 3072, 1, 8, 7e-4, 0.009)
    assert (afsft.collect.num_envs, afsft.collect.temperature, afsft.collect.max_reply_tokens) == (8, 0.5, 32)
    nb = json.loads((ROOT / "notebooks" / "06_miniwob.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    names = {line.split("=")[0].strip() for line in "".join(cell["source"]).splitlines() if " = " in line}
    assert set(params) <= names, set(params) - names  # papermill would add an unknown name silently


def test_executed_notebooks_carry_no_machine_paths_or_library_warnings():
    """Issue 15: the committed executed notebooks read cleanly anywhere: no absolute paths of the machine that ran
    them (site-packages, /tmp, /work, /home, /root) and no Python warnings in their outputs."""
    path = re.compile(r"(site-packages|/tmp/|/work/|/home/|/root/)")
    for nb_path in sorted((ROOT / "nbs_outputs").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for i, cell in enumerate(nb["cells"]):
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
                assert not path.search(text), (nb_path.name, i, path.search(text).group(0))
                assert "Warning:" not in text, (nb_path.name, i, text[:200])
        assert not path.search(json.dumps(nb["metadata"].get("papermill", {}))), nb_path.name


@pytest.mark.slow
def test_gpu_paper_script_dry_run(tmp_path):
    """scripts/gpu_paper.sh --dry-run: the GPU window's script, whole, on a tiny model on the CPU: the benchmark's
    arms, both tasks collected, trained, checkpointed and scored, and the report naming each part."""
    import os
    import subprocess

    env = {**os.environ, "DRY_OUT": str(tmp_path / "out")}
    run = subprocess.run(
        ["bash", "scripts/gpu_paper.sh", "--dry-run", "--minutes", "8"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    bench = json.loads((out / "bench.json").read_text())
    arms = {r["arm"] for r in bench["results"]}
    assert {"plain LoRA eager", "vlmq afsft paper", "vlmq afsft", "generate 32 auto"} <= arms
    for task in ("numberline", "blackjack"):
        scored = json.loads((out / task / "eval.json").read_text())
        assert scored["eval/episodes"] == 4
    report = (out / "report.md").read_text()
    assert "| tiny | 8 | vlmq afsft |" in report and report.count("Held-out (seeds 20000+") == 2


def test_the_core_has_no_import_cycle_and_online_sits_below_run():
    """The import graph of vlmq_core (scripts/diagnostics/import_graph.py, the closing note's module map): no cycle,
    `run` composes `online` and `online` imports nothing that leads back to `run`; the one import made inside a
    function is the documented lazy one of the envs package (only gymnasium at `import vlmq_core`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "diagnostics" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = mod.graph()
    assert mod.cycle(g) is None
    assert "vlmq_core.online" in g["vlmq_core.run"][0]
    reach, todo = set(), ["vlmq_core.online"]
    while todo:
        m = todo.pop()
        for t in (g[m][0] | g[m][1]) & g.keys():
            if t not in reach:
                reach.add(t)
                todo.append(t)
    assert "vlmq_core.run" not in reach and "vlmq_core.experiments" not in reach
    assert {m: local for m, (_, local, _) in g.items() if local} == {"vlmq_core.envs": {"vlmq_core.envs.text_action"}}


MAX_NOTEBOOK_BYTES = 1_500_000
"""Issue 31's goal for every committed executed notebook."""


@pytest.mark.parametrize("path", sorted(ROOT.glob("nbs_outputs/*.ipynb")), ids=lambda p: p.name)
def test_committed_executed_notebooks_read_without_javascript_and_stay_small(path):
    """What a code host, nbviewer or a mail shows of each executed notebook: under 1.5 MB, a PNG behind every plotly
    figure, no plotly.js, no saved widget (progress ends as text: no bar saved at 0%)."""
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.name}: {path.stat().st_size:,} bytes"
    nb = json.loads(path.read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    figures = [o["data"] for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert all("image/png" in f for f in figures), f"{path.name}: a plotly output without its picture"
    assert not any("plotly.js" in "".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert "widgets" not in nb["metadata"]
    shown = [
        "".join(o.get("data", {}).get("text/plain", "")) for o in outputs if o.get("output_type") == "display_data"
    ]
    assert not [t for t in shown if re.search(r"\b0%\|", t)], f"{path.name}: a progress bar saved before it moved"


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("nbs_outputs/*.ipynb")), ids=lambda p: p.name
)
def test_notebooks_name_their_kernel_as_ipykernel_installs_it(path):
    """JupyterLab rewrites a notebook's kernelspec to the running kernel's and marks the notebook modified the moment
    it opens when they differ ("Python 3" against ipykernel's "Python 3 (ipykernel)"); papermill copies the source's
    kernelspec into the executed copy (scripts/diagnostics/lab_open.py shows the mark)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    want = {"display_name": spec.display_name, "language": spec.language, "name": "python3"}
    assert json.loads(path.read_text())["metadata"]["kernelspec"] == want


def test_the_shipped_vision_weights_quote_notebook_00s_committed_scores():
    """tower.json's `accuracy` (what `embedded-vlm` reads) is notebook 00's executed scoring of those weights."""
    m = json.loads((ROOT / "nbs_outputs" / "00_embedded_vlm.metrics.json").read_text())
    info = json.loads((ROOT / "vlmq_core" / "weights" / "embedded_vlm" / "tower.json").read_text())["info"]
    assert m["build"] is False and m["train_minutes"] == info["train_minutes"]  # it scored these weights
    assert info["held_out"] == {"first_seed": 900_000_000, "per_task": m["per_task"]} and m["per_task"] == 100
    image = m["scores"]["image (embedded-vlm)"]
    assert info["accuracy"] == {t: {k: round(c["acc"], 4) for k, c in row.items()} for t, row in image.items()}


def test_readme_embedded_vlm_results_match_notebooks_00_03_and_04():
    """The README's paragraph on the embedded VLM quotes notebook 00's scoring of the shipped weights, notebook 03's
    NumberLine-from-pixels run and notebook 04's text AFSFT score on the same seeds."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    scores = json.loads((ROOT / "nbs_outputs" / "00_embedded_vlm.metrics.json").read_text())["scores"]
    image = scores["image (embedded-vlm)"]
    seen = {t: {k.split("/")[1]: c for k, c in row.items() if k.startswith("seen/")} for t, row in image.items()}

    def pct(task: str, *fields: str) -> list[str]:
        return [f"{seen[task][f]['acc']:.0%}" for f in fields]

    target, position = pct("NumberLine", "target", "current")
    assert target == position and f"NumberLine target and position {target};" in readme
    assert "Blackjack dealer {}, player {}, total {};".format(*pct("Blackjack", "dealer", "player", "total")) in readme
    cards = [*pct("EZPoints", "cards", "formula"), *pct("Points24", "cards", "formula")]
    quoted = {
        "Blackjack": ("dealer", "player", "total"),
        "EZPoints": ("cards", "formula"),
        "Points24": ("cards", "formula"),
    }
    se = [seen[t][f]["se"] for t, fields in quoted.items() for f in fields]
    assert "EZPoints cards {}, formula {}; Points24 cards {}, formula {}".format(*cards) in readme
    assert f"(SE {100 * min(se):.0f}-{100 * max(se):.0f})" in readme
    babyai = {t: f for t, f in seen.items() if t.startswith("BabyAI-")}
    front = [f["front"]["acc"] for f in babyai.values()]
    objects = [f["objects"]["acc"] for f in babyai.values()]
    assert f"object in front {span(front)}, object lists" in readme
    assert f"object lists {span(objects)}." in readme
    read = {t: [c["acc"] for k, c in row.items() if k.startswith("read/")] for t, row in image.items()}
    line, rest = read.pop("NumberLine"), [a for v in read.values() for a in v]
    quoted_read = f"NumberLine {span(line)}, the rest {span(rest)}"
    assert f"own transcription reads far less ({quoted_read})." in readme
    px = json.loads((ROOT / "nbs_outputs" / "03_offline_afsft_numberline_pixels.metrics.json").read_text())
    assert px["configs"]["afsft"]["eval"] == {"episodes": 100, "seed": 20_000, "num_envs": None}

    def score(m: dict) -> str:
        return f"{m['success']:.0%} (SE {100 * m['success_se']:.1f})"

    base, data = (f"{x:.0%}" for x in (px["base"]["success"], px["dataset"]["buffer/success_frac"]))
    assert f"base {base}, SFT {score(px['sft'])}, AFSFT {score(px['afsft'])}, data {data};" in readme
    text = json.loads((ROOT / "nbs_outputs" / "04_offline_to_online.metrics.json").read_text())["numberline"]
    assert text["eval_seed"] == 20_000 and text["offline"]["episodes"] == 100
    assert f"from text AFSFT scores {score(text['offline'])}." in readme


def test_readme_quotes_notebook_01_on_the_embedded_vlm():
    """The README's sentence on notebook 01 with `embedded-vlm` quotes its committed metrics file."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = json.loads((ROOT / "nbs_outputs" / "01_base_model_prompting_embedded_vlm.metrics.json").read_text())
    (tasks,) = m["results"].values()

    agent = [r["valid"] for runs in tasks.values() for k, r in runs.items() if k.startswith("agent/")]
    gym = {t: runs for t, runs in tasks.items() if not t.startswith("BabyAI")}
    fmt = {v: span([runs[f"min_format/{v}"]["valid"] for runs in gym.values()]) for v in ("text", "image", "both")}
    assert f"{span(agent)} valid with `agent` prompting in every view" in readme
    assert f"Gym Cards {fmt['text']} valid from the text alone, {fmt['image']} from the image alone," in readme
    assert f"{fmt['both']} from both, no wins;" in readme
    assert max(r["success"] for runs in gym.values() for r in runs.values()) == 0
    b = {v: tasks["BabyAI-GoToLocal"][f"min_format/{v}"] for v in ("both", "image")}
    both = (
        f"{b['both']['valid']:.0%} valid, {b['both']['success']:.0%} success (SE {100 * b['both']['success_se']:.0f})"
    )
    image = f"{b['image']['success']:.0%} (SE {100 * b['image']['success_se']:.0f})"
    assert f"BabyAI from both {both}, from the image alone {image}." in readme
