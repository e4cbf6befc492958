"""Notebooks smoke-run through papermill on a tiny local model folder, checked against what they saved."""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from vlmq_core import config
from vlmq_core.buffer import TurnBuffer
from vlmq_core.inspector import filter_summary
from vlmq_core.model import load_checkpoint
from vlmq_core.run import RunConfig
from vlmq_core.rundir import load_history
from vlmq_core.tiny import TINY_TOWER

papermill = pytest.importorskip("papermill")
ROOT = Path(__file__).resolve().parents[1]


def same(a: dict, b: dict) -> bool:
    """Equal dicts of numbers, NaN equal to NaN (a filter group with no tokens)."""
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def run_notebook(name: str, folder: Path, **parameters) -> int:
    """Execute ``notebooks/<name>.ipynb`` through papermill from the repository root into `folder`, check what a
    viewer without JavaScript gets from it (:func:`check_static_views`) and return its number of figures."""
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"),
        str(folder / f"{name}.ipynb"),
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
        parameters=parameters,
    )
    return check_static_views(folder / f"{name}.ipynb")


PLOTLY = "application/vnd.plotly.v1+json"


def check_static_views(path: Path) -> int:
    """What a viewer without JavaScript gets from an executed notebook: every plotly output carries a PNG and no
    plotly.js, no progress widget was saved (bars end as text), and nbconvert's HTML, opened in Chromium with
    JavaScript off, shows one picture per figure. Returns the number of figures."""
    nb = json.loads(path.read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    figures = [o["data"] for o in outputs if PLOTLY in o.get("data", {})]
    assert all("image/png" in f for f in figures), "a plotly output without its picture"
    assert not any("plotly.js" in "".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert "widgets" not in nb["metadata"]  # no widget state saved for a viewer to restore (or JupyterLab to redo)
    texts = [
        "".join(o.get("data", {}).get("text/plain", "")) for o in outputs if o.get("output_type") == "display_data"
    ]
    assert not [t for t in texts if re.search(r"\b0%\|", t)], "a progress bar saved before it moved"
    nbconvert = pytest.importorskip("nbconvert")
    sync_api = pytest.importorskip("playwright.sync_api")
    html, _ = nbconvert.HTMLExporter().from_filename(str(path))
    page_file = path.with_suffix(".html")
    page_file.write_text(html)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(java_script_enabled=False).new_page()
            page.goto(page_file.as_uri())
            pictures = page.locator(".jp-RenderedImage img[src^='data:image/png']").count()
        finally:
            browser.close()
    images = [o for o in outputs if "image/png" in o.get("data", {})]  # the figures' and any other picture output
    assert pictures == len(images), (pictures, len(images))
    return len(figures)


def tiny_offline(model: str, steps: int) -> list[str]:
    """Overrides that shrink notebook 03's NumberLine runs (and those reusing them) to seconds on a tiny model."""
    return [
        f"model.name={model}",
        "data.sources.0.episodes=4",
        "data.sources.1.episodes=1",
        "data.sources.2.episodes=1",
        "collect.num_envs=2",
        "collect.max_reply_tokens=4",
        "eval.episodes=2",
        f"train.steps={steps}",
        "critic.hidden=32",
        "train.batch_size=2",
        "train.whiten_calib_turns=4",
        "loss.filter_start_step=1",
    ]


@pytest.mark.slow
def test_02_dataset_building_runs_and_its_tables_come_from_its_datasets(tmp_path, tiny_folders):
    """Notebook 02 on a tiny random model with a few episodes per source, checked against the datasets it wrote:
    every table row is what the saved dataset gives, every source has the episodes asked for, the uncorrupted
    oracle solves every NumberLine episode and random moves are always valid (a broken oracle, corruption or
    parser shows here), and the training datasets land under out_dir, not in runs/."""
    from vlmq_core.survey import source_quality

    sources = [
        {"strategy": "random", "episodes": 3, "seed": 0},
        {"strategy": "oracle", "episodes": 2, "seed": 3000, "corrupt_rate": 0.0},
        {"strategy": "oracle", "episodes": 2, "seed": 3000, "corrupt_rate": 0.5},
        {"strategy": "min_format", "episodes": 1, "seed": 2000},
    ]
    overrides = [f"model.name={tiny_folders['llama']}", "collect.num_envs=2", "collect.max_reply_tokens=4"]
    run_notebook(
        "02_dataset_building",
        tmp_path,
        overrides=overrides,
        survey_sources=sources,
        survey_tasks=["NumberLine", "Blackjack"],
        out_dir=str(tmp_path / "out"),
        metrics_path=str(tmp_path / "metrics.json"),
    )
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["train_datasets"]["numberline"]["path"] == str(tmp_path / "out" / "numberline" / "data")
    for name, record in [*m["train_datasets"].items(), *m["survey"].items()]:
        assert record["sources"] == json.loads(json.dumps(source_quality(TurnBuffer(record["path"])))), name
    survey = {task: {r["source"]: r for r in m["survey"][task]["sources"]} for task in m["survey"]}
    for task, rows in survey.items():
        assert [rows[s]["episodes"] for s in ("random", "oracle@0", "oracle@0.5")] == [3, 2, 2], task
        assert rows["random"]["valid"] == 1.0 and rows["oracle@0"]["valid"] == 1.0
    assert survey["NumberLine"]["oracle@0"]["success"] == 1.0
    assert m["survey"]["Blackjack"]["limit"] == pytest.approx(0.4295, abs=1e-4)
    outputs = [
        o
        for c in json.loads((tmp_path / "02_dataset_building.ipynb").read_text())["cells"]
        for o in c.get("outputs", [])
    ]
    assert any("Dataset samples, static rendering" in str(o.get("data", {})) for o in outputs)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["NumberLine", "EZPoints"])
def test_03_offline_afsft_runs_and_its_numbers_come_from_its_runs(tmp_path, tiny_folders, task):
    """Notebook 03 end to end on a tiny random model, then checked against its own outputs: the metrics file's
    evaluations are the runs' eval.json, its dataset statistics the dataset's, and its filter summary is what
    the saved AFSFT checkpoint gives on the saved dataset (a wrong checkpoint, a lost critic, PopArt or whitening
    state, or another loss config than the run's would all show here)."""
    metrics_path = tmp_path / "metrics.json"
    overrides = tiny_offline(tiny_folders["llama"], steps=3)
    figures = run_notebook(
        "03_offline_afsft",
        tmp_path,
        task=task,
        overrides=overrides,
        out_dir=str(tmp_path / "run"),
        metrics_path=str(metrics_path),
    )
    m = json.loads(metrics_path.read_text())
    run = tmp_path / "run"
    assert m["task"] == task and m["model"] == tiny_folders["llama"] and m["hardware"] and m["episodes"] == 2
    for name in ("sft", "afsft"):
        saved = json.loads((run / name / "eval.json").read_text())
        assert m[name] == {k: saved[f"eval/{k}"] for k in m[name]}, name
        assert saved["step"] == 3
        cfg = config.load(RunConfig, run / name / "config.yaml")
        assert config.to_dict(cfg) == m["configs"][name]
        assert cfg.model.name == tiny_folders["llama"] and cfg.run_dir == str(run / name)
    assert m["base"]["episodes"] == 2
    data = TurnBuffer(run / "data")
    asked = sum(source["episodes"] for source in m["configs"]["afsft"]["data"]["sources"])
    assert m["dataset"] == json.loads(json.dumps(data.stats())) and m["dataset"]["buffer/episodes"] == asked
    assert asked == {"NumberLine": 6, "EZPoints": 18}[task]  # the tiny overrides shrink sources 0-2 only
    afsft = load_checkpoint(run / "afsft", device="cpu")
    assert afsft.cfg.critic.init_q == m["afsft_init_q"] == data.min_return_to_go()
    cfg = config.load(RunConfig, run / "afsft" / "config.yaml")
    assert same(filter_summary(afsft, data.transitions(), loss=cfg.loss), m["afsft_filter"])
    # executed by papermill (no one at the controls): the inspector is static HTML, and no widget is saved
    outputs = [
        o for c in json.loads((tmp_path / "03_offline_afsft.ipynb").read_text())["cells"] for o in c.get("outputs", [])
    ]
    widgets = [o["data"] for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not any("Inspector" in "".join(w.get("text/plain", "")) for w in widgets)  # tqdm's bars are the others
    static = [o["data"]["text/html"] for o in outputs if "Token inspector, static" in str(o.get("data", {}))]
    assert len(static) == 1 and "kept " in "".join(static[0]) and "by critic Q" in "".join(static[0])
    assert figures >= 3  # the evaluation bars, the learning curves, the token heatmap; each with its picture


@pytest.mark.slow
def test_04_offline_to_online_runs_all_three_tasks_and_its_numbers_come_from_its_runs(tmp_path, tiny_folders):
    """Notebook 04 end to end on a tiny random model (each task a couple of epochs), then checked against its
    runs: each score is the run's cached evaluation of that checkpoint, the steps and updates are the last epoch's,
    the data statistics the dataset's; NumberLine and Blackjack have an offline checkpoint, BabyAI a base score."""
    metrics_path = tmp_path / "metrics.json"
    common = [
        f"model.name={tiny_folders['llama']}",
        "collect.num_envs=2",
        "collect.max_reply_tokens=4",
        "critic.hidden=32",
        "train.batch_size=2",
        "train.whiten_calib_turns=4",
        "loss.filter_start_step=1",
        "eval.episodes=2",
        "online.epochs=2",
        "online.updates_per_epoch=2",
        "online.steps_per_env=2",
        "online.eval_every=1",
    ]
    per_task = {
        "numberline": ["data.sources.0.episodes=4", "data.sources.1.episodes=1", "data.sources.2.episodes=1"],
        "blackjack": [f"data.sources.{i}.episodes={n}" for i, n in enumerate((4, 2, 1, 1))],
        "babyai": ["online.min_buffer_turns=4"],
    }
    per_task["numberline"].append("train.steps=2")  # its offline run (notebook 03's), which the online run continues
    per_task["blackjack"].append("online.offline_epochs=1")
    episodes = {"numberline": 2, "blackjack": 3, "babyai": 2}
    run_notebook(
        "04_offline_to_online",
        tmp_path,
        sections=list(episodes),  # BabyAI too, which the notebook's default (the main job's) leaves out
        overrides=common,
        task_overrides=per_task,
        final_episodes=episodes,
        out_dir=str(tmp_path / "out"),
        metrics_path=str(metrics_path),
    )
    m = json.loads(metrics_path.read_text())
    assert m["hardware"] and m["final_seed"] == 20_000
    for task, n in episodes.items():
        run = tmp_path / "out" / task / "run"
        rows = load_history(run, key="epoch")
        record = m[task]
        assert (
            record["env_steps"] == rows[-1]["online/env_steps"] > 0 and record["updates"] == rows[-1]["online/updates"]
        )
        assert config.to_dict(config.load(RunConfig, run / "config.yaml")) == m["configs"][task]
        names = {"numberline": ["offline", "online"], "blackjack": ["offline", "online"], "babyai": ["base", "online"]}
        for name in names[task]:
            saved = json.loads((run / f"score-{name}-s20000-n{n}.json").read_text())
            assert record[name] == {k: saved[f"eval/{k}"] for k in record[name]} and record[name]["episodes"] == n
        assert ("offline" in record) == (task != "babyai") and ("base" in record) == (task == "babyai")
        if task != "babyai":
            data = TurnBuffer(tmp_path / "out" / task / "data")
            assert record["data"] == json.loads(json.dumps(data.stats()))
        else:
            assert record["data"] is None
            assert set(record["exploration"]) == {"random", "oracle@0.5"}  # each strategy alone, same episodes
            for name, score in record["exploration"].items():
                saved = json.loads((run / f"score-{name}-s20000-n{n}.json").read_text())
                assert score == {k: saved[f"eval/{k}"] for k in score} and score["episodes"] == n
    offline = tmp_path / "out" / "numberline" / "offline"  # notebook 03's run, trained here, continued online
    assert m["numberline"]["init_from"] == str(offline) and m["blackjack"]["init_from"] is None
    started = torch.load(offline / "checkpoint" / "trainer.pt", weights_only=False)["step"]
    assert started == 2 and m["numberline"]["updates"] == started + 2 * 2


@pytest.mark.slow
def test_01_base_model_prompting_scores_each_view_and_its_numbers_are_the_scores(tmp_path, tiny_folders):
    """Notebook 01 on a tiny text model and a tiny VLM: the VLM is scored in every view, the text model once; a
    score recomputed here with `prompting.score` on the same seeds equals the notebook's (a wrong view, strategy,
    task or seed in the notebook would show), and the failure counts add up to the invalid replies."""
    from vlmq_core import prompting
    from vlmq_core.collect import CollectConfig
    from vlmq_core.model import ModelConfig, PolicyConfig, load_policy

    metrics_path = tmp_path / "metrics.json"
    run_notebook(
        "01_base_model_prompting",
        tmp_path,
        models=[tiny_folders["llama"], tiny_folders["idefics3"]],
        tasks=["NumberLine", "BabyAI-GoToLocal"],
        episodes=2,
        num_envs=2,
        overrides=["collect.max_reply_tokens=4"],
        metrics_path=str(metrics_path),
    )
    m = json.loads(metrics_path.read_text())
    assert m["hardware"] and m["episodes"] == 2 and m["seed"] == 10_000
    text_model, vlm = m["results"].values()
    both = ["agent/both", "agent/image", "agent/text", "min_format/both", "min_format/image", "min_format/text"]
    for task in ("NumberLine", "BabyAI-GoToLocal"):
        assert list(text_model[task]) == ["agent/text", "min_format/text"] and list(vlm[task]) == both
        for score in [*text_model[task].values(), *vlm[task].values()]:
            assert score["episodes"] == 2 and sum(score["failures"].values()) == round(
                (1 - score["valid"]) * score["turns"]
            )
    policy = load_policy(PolicyConfig(model=ModelConfig(name=tiny_folders["idefics3"])))
    cfg = CollectConfig(task="BabyAI-GoToLocal", num_envs=2, max_reply_tokens=4, view="pov")  # babyai_view's default
    again = prompting.score(policy, cfg, "min_format", "image", episodes=2, seed=10_000, progress=False)
    assert json.loads(json.dumps(again)) == vlm["BabyAI-GoToLocal"]["min_format/image"]


@pytest.mark.slow
def test_05_maxq_ablation_runs_four_arms_and_its_numbers_come_from_its_runs(tmp_path, tiny_folders):
    """Notebook 05 on a tiny model: SFT, AFSFT and two max-Q runs on one dataset; each differs from AFSFT only in
    what the arm says; the curves are the max-Q runs' logged rows, and the final token usage is what the saved
    checkpoints give on the dataset (recomputed here on all its turns with the same seeded sample)."""
    import random

    from vlmq_core.inspector import token_usage_summary
    from vlmq_core.tokens import seen_tokens

    metrics_path = tmp_path / "metrics.json"
    run_notebook(
        "05_maxq_ablation",
        tmp_path,
        overrides=tiny_offline(tiny_folders["llama"], steps=4),
        curve_every=2,
        curve_episodes=2,
        usage_turns=6,
        out_dir=str(tmp_path / "out"),
        metrics_path=str(metrics_path),
    )
    m = json.loads(metrics_path.read_text())
    out = tmp_path / "out"
    assert list(m["results"]) == ["sft", "afsft", "maxq", "maxq_paper_init"]
    afsft = config.load(RunConfig, out / "afsft" / "config.yaml")
    for arm, differs in (("maxq", {"loss.actor"}), ("maxq_paper_init", {"loss.actor", "critic.init_q"})):
        cfg = config.load(RunConfig, out / arm / "config.yaml")
        assert set(config.differences(afsft, cfg)) == differs | {"run_dir"} and cfg.loss.actor == "maxq"
        rows = [r for r in load_history(out / arm) if "eval/valid" in r]
        assert [r["step"] for r in rows] == [2, 4] == [r["step"] for r in m["curves"][arm]]
        assert all(0 <= r["tokens/pi_unseen"] <= 1 for r in rows)
    assert config.load(RunConfig, out / "maxq_paper_init" / "config.yaml").critic.init_q is None
    for arm in m["results"]:
        saved = json.loads((out / arm / "eval.json").read_text())
        assert m["results"][arm] == {k.removeprefix("eval/"): v for k, v in saved.items() if k.startswith("eval/")}
    data = TurnBuffer(out / "data")
    sample = random.Random(0).sample(data.transitions(), 6)
    policy = load_checkpoint(out / "maxq_paper_init", device="cpu")
    seen = seen_tokens(policy, (t.reply for t in data.turns), policy.vocab_size)
    assert m["seen_tokens"] == int(seen.sum())
    again = token_usage_summary(policy, sample, seen)
    assert again == pytest.approx(m["usage"]["maxq_paper_init"], rel=1e-4)
    assert set(m["usage"]["sft"]) == {"tokens/pi_unseen"}  # SFT trained no critic


@pytest.mark.slow
def test_06_miniwob_runs_in_real_browsers_and_its_tables_come_from_its_runs(tmp_path, tiny_folders):
    """Notebook 06 on a tiny random model, two click tasks, one episode per source and task: its per-task data
    rows are what the saved dataset gives for each task, every source played every task, the demonstrator's
    replies are valid calls, each run is scored on every task, and the table's mean row is the mean of its rows."""
    from vlmq_core.survey import source_quality, task_table

    tasks = ["MiniWoB-click-test", "MiniWoB-click-button"]
    sources = [
        {"strategy": "random", "episodes": 1, "seed": 0},
        {"strategy": "oracle", "episodes": 1, "seed": 100, "corrupt_rate": 0.5},
        {"strategy": "partial", "episodes": 1, "seed": 200},
    ]
    overrides = [o for o in tiny_offline(tiny_folders["llama"], steps=2) if not o.startswith(("eval.", "data."))]
    metrics_path = tmp_path / "metrics.json"
    run_notebook(
        "06_miniwob",
        tmp_path,
        tasks=tasks,
        sources_per_task=sources,
        eval_episodes=1,
        overrides=overrides,
        out_dir=str(tmp_path / "run"),
        metrics_path=str(metrics_path),
    )
    m = json.loads(metrics_path.read_text())
    data = TurnBuffer(tmp_path / "run" / "data")
    assert m["tasks"] == tasks and set(m["data"]) == set(tasks)
    for task in tasks:
        assert m["data"][task] == json.loads(json.dumps(source_quality(data, task))), task
        rows = {r["source"]: r for r in m["data"][task]}
        assert [rows[s]["episodes"] for s in ("random", "oracle@0.5", f"{tiny_folders['llama']}/partial")] == [1] * 3
    oracle = [t for t in data.turns if t.strategy == "oracle"]
    assert oracle and all(re.fullmatch(r'\[action\] click\("[A-Za-z0-9]+"\)', t.reply) for t in oracle)
    for run in ("base", "sft", "afsft"):
        assert set(m["results"][run]) == set(tasks) and all(r["episodes"] == 1 for r in m["results"][run].values())
    for name in ("sft", "afsft"):
        cfg = config.load(RunConfig, tmp_path / "run" / name / "config.yaml")
        assert config.to_dict(cfg) == m["configs"][name] and cfg.train.steps == 2
    results = {r: {t: {f"eval/{k}": v for k, v in x.items()} for t, x in by.items()} for r, by in m["results"].items()}
    table = task_table({t: m["data"][t][-1] for t in tasks}, results)
    mean = sum(m["results"]["afsft"][t]["success"] for t in tasks) / len(tasks)
    assert table.splitlines()[-1].split(" | ")[-2] == f"{mean:.0%}"


@pytest.mark.slow
def test_00_embedded_vlm_trains_a_tiny_tower_and_its_numbers_and_weights_are_what_it_scored(tmp_path, tiny_folders):
    """Notebook 00 on the tiny text model with a tiny tower: it trains both steps, writes weights that load into
    the same reader, and its metrics are what `reading_accuracy` gives for those weights on the same renders."""
    from vlmq_core.model import ModelConfig, load_backbone
    from vlmq_core.sight import reading_accuracy
    from vlmq_core.vision import assemble, read_build_log, read_vision

    tower = dataclasses.asdict(TINY_TOWER)  # the tiny tower the unit tests use, as a notebook parameter
    metrics_path = tmp_path / "metrics.json"
    figures = run_notebook(
        "00_embedded_vlm",
        tmp_path,
        model=tiny_folders["llama"],
        tasks=["NumberLine", "BabyAI-GoToLocal"],
        tower=tower,
        caption_steps=3,
        caption_batch=4,
        answer_steps=2,
        answer_batch=2,
        recaption_steps=2,
        per_task=2,
        out_dir=str(tmp_path / "run"),
        metrics_path=str(metrics_path),
    )
    assert figures == 5  # the training curves, the held-out checks and the three reading figures
    m = json.loads(metrics_path.read_text())
    assert [c["step"] for c in m["checks"]] == [3, 5, 7]  # after step 1's 3 updates, step 2's 2 and step 3's 2
    assert set(m["checks"][0]) >= {"tokens", "NumberLine/current"}
    assert m["tower"] == tower and m["shipped"] is None
    assert [r["stage"] for r in m["log_tail"]] == [2, "check", 3, 3, "check"]
    saved, state, info = read_vision(tmp_path / "run" / "weights")
    assert vars(saved) == tower and info["built_by"] == "notebooks/00_embedded_vlm.ipynb"
    assert len(info["first_losses"]) == 3
    record = read_build_log(tmp_path / "run" / "weights")  # shipped beside the weights: the curves and checks
    assert [(r["stage"], r["step"], r.get("updates")) for r in record] == [
        (1, 3, 3), ("check", 3, None), (2, 2, 2), ("check", 5, None), (3, 2, 2), ("check", 7, None)
    ]  # fmt: skip
    assert record[0]["loss"] == pytest.approx(sum(info["first_losses"]) / 3)
    lm, tok, _ = load_backbone(ModelConfig(name=tiny_folders["llama"], dtype="float32", device="cpu"))
    vlm, processor = assemble(lm, tok, saved, state)
    again = reading_accuracy(
        vlm, processor, ["NumberLine", "BabyAI-GoToLocal"], per_task=2, alignment=info["sight"]["alignment"]
    )
    image = m["scores"]["image (embedded-vlm)"]
    assert {t: {k: v["acc"] for k, v in row.items()} for t, row in again.items()} == {
        t: {k: v["acc"] for k, v in row.items()} for t, row in image.items()
    }


@pytest.mark.slow
def test_loading_the_embedded_model_in_a_notebook_leaves_a_finished_line_not_a_widget(tmp_path):
    """transformers' GGUF conversion bar is tqdm.auto, a widget that an executed copy keeps at ``0% 0/272`` (the
    committed notebooks had one per model load); vlmq's load swaps in its own bar, which ends as one line."""
    import nbformat

    cell = (
        "from vlmq_core.experiments import setup_notebook\n"
        "from vlmq_core.model import ModelConfig, load_backbone\n"
        "setup_notebook()\n"
        "model = load_backbone(ModelConfig(name='embedded', dtype='float32', device='cpu'))[0]"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "load.ipynb")
    papermill.execute_notebook(
        str(tmp_path / "load.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    outputs = json.loads((tmp_path / "out.ipynb").read_text())["cells"][0]["outputs"]
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    lines = ["".join(o.get("data", {}).get("text/plain", "")) for o in outputs if o["output_type"] == "display_data"]
    assert any(re.fullmatch(r"Converting and de-quantizing GGUF tensors\.\.\.: 272/272 in \S+", t) for t in lines), (
        lines
    )
