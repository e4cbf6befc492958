"""The shipped embedded VLM (``model.name=embedded-vlm``): it loads offline with its processor, reads held-out
renders, plays every task from images alone, and notebook 00 rebuilds it the same way (its first updates' losses
match the ones the shipped build logged). Slow: each test loads the real 135M model."""

import importlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from vlmq_core import reading as rd
from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, SourceConfig, collect
from vlmq_core.envs import CATALOG, get_task
from vlmq_core.model import ModelConfig, PolicyConfig, load_backbone, load_policy
from vlmq_core.sight import SightConfig, reading_accuracy, train_sight
from vlmq_core.vision import EMBEDDED_VLM, IMAGE_TOKEN, WEIGHTS, read_vision

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped():
    """The embedded VLM as notebook 00 and the tests use it: float32 on the CPU, its processor, what built it."""
    vlm, processor, is_vlm = load_backbone(ModelConfig(name=EMBEDDED_VLM, dtype="float32", device="cpu"))
    assert is_vlm
    return vlm, processor, read_vision(WEIGHTS)


def test_the_weights_ship_small_and_say_what_built_them(shipped):
    _, _, (tower, state, info) = shipped
    assert (WEIGHTS / "vision.safetensors").stat().st_size < 8e6  # the tower and projector in float16
    assert info["built_by"] == "notebooks/00_embedded_vlm.ipynb" and info["language_model"] == "embedded"
    assert info["sight"]["caption_steps"] == 12000 and info["sight"]["alignment"] == "monotonic"
    assert info["sight"]["answer_steps"] == 200 and info["sight"]["recaption_steps"] == 3000
    assert info["sight"]["recaption_more"] == ["Points24"] * 3
    assert sum(v.numel() for v in state.values()) == pytest.approx(2.4e6, rel=0.1)
    assert json.loads((WEIGHTS / "tower.json").read_text())["tower"] == asdict(tower)


def test_it_loads_offline_with_a_processor_that_puts_the_image_in_the_prompt(shipped, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vlm, processor, (tower, _, _) = shipped
    r = rd.reading("Blackjack", rd.HELD_OUT_SEED)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rd.TRANSCRIBE}]}],
        add_generation_prompt=True,
    )
    inputs = processor(text=[text], images=[r.image], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((inputs["input_ids"] == image_id).sum()) == tower.image_tokens == 196
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert vlm(**inputs).logits.shape[-1] == len(processor.tokenizer)


def test_it_reads_held_out_numberline_renders(shipped):
    vlm, processor, (_, _, info) = shipped
    scores = reading_accuracy(vlm, processor, ["NumberLine"], per_task=8, alignment=info["sight"]["alignment"])
    for key in ("seen/target", "seen/current"):  # the eyes (the language model's own transcription: 57-60%)
        assert scores["NumberLine"][key]["acc"] >= 7 / 8, (key, scores["NumberLine"][key])


@pytest.fixture(scope="module")
def policy():
    return load_policy(PolicyConfig(model=ModelConfig(name=EMBEDDED_VLM, device="cpu")))


@pytest.mark.parametrize(
    "task", ["NumberLine", "Blackjack", "EZPoints", "Points24", "BabyAI-GoToLocal"], ids=lambda t: t
)
def test_it_plays_every_task_from_the_image_alone(policy, task, tmp_path, monkeypatch):
    # episodes cut at 6 turns: BabyAI's 64 would make this one test 100 s of its 2-core CI
    spec, home = get_task(task), importlib.import_module(f"vlmq_core.envs.{CATALOG[task][0]}")
    monkeypatch.setitem(home.TASKS, task, replace(spec, text_config=replace(spec.text_config, max_steps=6)))
    view = "pov" if task.startswith("BabyAI-") else "full"
    play = CollectConfig(task=task, num_envs=2, max_reply_tokens=8, observation_text=False, view=view)
    data = TurnBuffer(tmp_path)
    results = collect(policy, play, SourceConfig("min_format", 2, 0), buffer=data, progress=False)
    assert len(results) == 2 and all(1 <= r.length <= 6 for r in results)
    turns = data.turns
    assert len(turns) == sum(r.length for r in results)
    assert all(t.image is not None and "shown in the image" in t.prompt for t in turns)
    assert all(t.source == policy.name for t in turns)


def test_notebook_00_rebuilds_the_shipped_weights_the_same_way(shipped, tmp_path, monkeypatch):
    # the shipped build's first three step-1 updates, rerun from the same seed and settings: their losses match
    # what the build logged (bfloat16 autocast differs a little between CPUs, hence the tolerance)
    import vlmq_core.sight as sight
    from vlmq_core.vision import assemble

    _, _, (tower, _, info) = shipped
    cfg = SightConfig(**{**info["sight"], "tower": tower, "check_every": 0})
    lm, tok, _ = load_backbone(ModelConfig(name="embedded", dtype="float32", device="cpu"))
    vlm, processor = assemble(lm, tok, tower, seed=cfg.seed)
    step, calls = sight.train_caption_step, {"n": 0}

    def stops_after_three(*args, **kwargs):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return step(*args, **kwargs)

    monkeypatch.setattr(sight, "train_caption_step", stops_after_three)
    with pytest.raises(KeyboardInterrupt):
        train_sight(vlm, processor, cfg, tmp_path, every=1, progress=False)
    log = torch.load(tmp_path / "sight.pt", weights_only=True)["log"]
    assert [r["loss"] for r in log] == pytest.approx(info["first_losses"], rel=2e-2)


def test_notebook_00_scores_the_shipped_weights_without_a_build(tmp_path):
    import papermill

    root = Path(__file__).resolve().parents[1]
    metrics = tmp_path / "metrics.json"
    papermill.execute_notebook(
        str(root / "notebooks" / "00_embedded_vlm.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"build": False, "tasks": ["NumberLine"], "per_task": 2, "metrics_path": str(metrics)},
        cwd=str(root),
        kernel_name="python3",
        progress_bar=False,
    )
    m = json.loads(metrics.read_text())
    _, _, info = read_vision(WEIGHTS)
    assert m["build"] is False and m["train_minutes"] == info["train_minutes"] and m["shipped"] is None
    every_update = sum(info["sight"][k] for k in ("caption_steps", "answer_steps", "recaption_steps"))
    assert [c["step"] for c in m["checks"]][-1] == every_update  # the last check: after step 3
    assert set(m["scores"]["image (embedded-vlm)"]["NumberLine"]) >= {"seen/target", "read/current"}
