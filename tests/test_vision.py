"""The embedded VLM's parts on tiny models: assembly, stored vision weights, the two training steps, the reading
test and an AFSFT update from images (the real model's loading is in test_vision_embedded.py)."""

import itertools
import math
from collections import Counter
from dataclasses import asdict, replace

import pytest
import torch

from vlmq_core import reading as rd
from vlmq_core import sight
from vlmq_core.config import ConfigError
from vlmq_core.model import VISION_WEIGHTS, ModelConfig, ModelLoadError, Policy, PolicyConfig, check_model_name
from vlmq_core.sight import (
    SightConfig,
    answer_inputs,
    caption_labels,
    caption_loss,
    caption_targets,
    compact_log,
    monotonic_caption_loss,
    nearest_tokens,
    reading_accuracy,
    train_sight,
)
from vlmq_core.tiny import TINY_TOWER, tiny_embedded_vlm, tiny_llama
from vlmq_core.vision import (
    IMAGE_TOKEN,
    TowerConfig,
    assemble,
    read_vision,
    save_vision,
    vision_modules,
    vision_state_dict,
)


def vision_params(vlm) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": p for name, m in vision_modules(vlm).items() for k, p in m.named_parameters()}


def test_assembly_reuses_the_language_model_and_adds_only_the_image_token():
    lm, tok = tiny_llama()
    rows = lm.get_input_embeddings().weight.shape[0]
    mean = lm.get_input_embeddings().weight.detach().mean(0).clone()
    vlm, proc = assemble(lm, tok, TINY_TOWER)
    assert vlm.model.language_model is lm.model and vlm.lm_head is lm.lm_head
    image_id = proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert image_id == rows == vlm.get_input_embeddings().weight.shape[0] - 1
    torch.testing.assert_close(vlm.get_input_embeddings().weight[image_id], mean)
    assert vlm.lm_head.weight is vlm.get_input_embeddings().weight  # still tied
    r = rd.reading("NumberLine", rd.TRAIN_SEED)
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True
    )
    inputs = proc(text=[text], images=[r.image], return_tensors="pt")
    assert int((inputs["input_ids"] == image_id).sum()) == TINY_TOWER.image_tokens == 16
    assert not any(p.device.type == "meta" for p in vlm.parameters())
    assert vlm(**inputs).logits.shape[-1] == len(proc.tokenizer)


def test_vision_weights_round_trip_and_refuse_what_does_not_fit(tmp_path):
    vlm, _ = tiny_embedded_vlm(seed=3)
    save_vision(vlm, TINY_TOWER, tmp_path, {"steps": 7})
    tower, state, info = read_vision(tmp_path)
    assert tower == TINY_TOWER and info == {"steps": 7}
    other, _ = assemble(*tiny_llama(), tower, state)
    for k, v in vision_state_dict(other).items():
        torch.testing.assert_close(v, vision_state_dict(vlm)[k].half().float())
    with pytest.raises(RuntimeError, match="size mismatch|Missing key"):
        assemble(*tiny_llama(), TowerConfig(image_size=32, patch_size=8, hidden_size=64, layers=1, heads=2), state)
    with pytest.raises(ValueError, match="no embedded VLM has"):
        assemble(*tiny_llama(), tower, {**state, "lm_head.weight": torch.zeros(1)})


def test_embedded_vlm_names_a_folder_without_weights_in_one_sentence(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no tower.json or vision.safetensors"):
        check_model_name(ModelConfig(name="embedded-vlm", vision=str(tmp_path)))
    with pytest.raises(ModelLoadError, match="model.vision is for model.name=embedded-vlm only"):
        check_model_name(ModelConfig(name="embedded", vision=str(tmp_path)))
    if not (VISION_WEIGHTS / "tower.json").is_file():  # until the built weights ship, the message says how to build
        with pytest.raises(ModelLoadError, match=r"not in this checkout .* `bash scripts/main.sh 00`"):
            check_model_name(ModelConfig(name="embedded-vlm"))


def test_tower_and_sight_settings_are_refused_in_one_sentence():
    with pytest.raises(
        ConfigError, match=r"^tower.image_size \(224\) must be a multiple of tower.patch_size \(15\)\.$"
    ):
        TowerConfig(patch_size=15)
    with pytest.raises(ConfigError, match=r"^tower.hidden_size \(192\) must be a multiple of tower.heads \(5\)\.$"):
        TowerConfig(heads=5)
    with pytest.raises(ConfigError, match=r"^tower.layers must be >= 1, not 0\.$"):
        TowerConfig(layers=0)
    with pytest.raises(ConfigError, match=r"^sight.caption_lr must be > 0, not 0.0\.$"):
        SightConfig(caption_lr=0.0)
    with pytest.raises(ConfigError, match=r"^sight.tasks: no renders to read for \['MiniWoB-click-button'\]"):
        SightConfig(tasks=["MiniWoB-click-button"])
    assert SightConfig(tower={"layers": 2}).tower == TowerConfig(layers=2)
    with pytest.raises(ConfigError, match=r"^sight.check_renders must be >= 1, not 0\.$"):
        SightConfig(check_renders=0)
    with pytest.raises(ConfigError, match=r"^sight.recaption_more: no renders to read for \['Points42'\]"):
        SightConfig(recaption_more=["Points42"])


def test_step_3_draws_a_task_named_in_recaption_more_once_more_a_round_and_only_step_3_does():
    more = ["Points24", "Points24", "EZPoints"]
    cfg = SightConfig(tasks=["NumberLine", "Blackjack", "Points24"], recaption_more=more)
    count = lambda stage: Counter(r.task for r in sight._round(cfg, stage, 5, 10))  # noqa: E731
    assert count(3) == {"Points24": 6, "NumberLine": 2, "Blackjack": 2}  # EZPoints is not among the tasks
    for stage in (1, 2):  # ten renders of three tasks in turn
        assert set(count(stage)) == set(cfg.tasks) and sorted(count(stage).values()) == [3, 3, 4]


def test_sight_under_bf16_autocast_keeps_float32_weights_and_learns(tmp_path):
    cfg = SightConfig(tasks=["NumberLine"], tower=TINY_TOWER, caption_steps=3, caption_batch=2, answer_steps=1,
                      answer_batch=1, recaption_steps=1, bf16=True, check_renders=1)  # fmt: skip
    vlm, proc = tiny_embedded_vlm()
    before = {k: v.detach().clone() for k, v in vision_params(vlm).items()}
    log = train_sight(vlm, proc, cfg, tmp_path, progress=False)
    assert [r["stage"] for r in log] == [1, 1, 1, "check", 2, "check", 3, "check"]
    assert all(math.isfinite(r["loss"]) for r in log if r["stage"] != "check")
    assert {v.dtype for v in vision_params(vlm).values()} == {torch.float32}
    assert any(not torch.equal(v, before[k]) for k, v in vision_params(vlm).items())


def test_a_finished_two_step_build_gains_step_3_and_nothing_else_may_change(tmp_path):
    # the shipped weights' history: a build saved before step 3 existed, continued with it from its checkpoint
    two = SightConfig(tasks=["NumberLine"], tower=TINY_TOWER, caption_steps=2, caption_batch=2, answer_steps=1,
                      answer_batch=1, recaption_steps=0, check_renders=1)  # fmt: skip
    vlm, proc = tiny_embedded_vlm()
    first = train_sight(vlm, proc, two, tmp_path, progress=False)
    saved = torch.load(tmp_path / "sight.pt", weights_only=True)
    for key in ("recaption_steps", "recaption_lr", "recaption_more"):  # saved before the settings existed
        del saved["config"][key]
    torch.save(saved, tmp_path / "sight.pt")
    moved = {k: v.clone() for k, v in vision_state_dict(vlm).items()}
    three = replace(two, recaption_steps=2, recaption_more=["NumberLine"])
    log = train_sight(tiny_embedded_vlm()[0], proc, three, tmp_path, progress=False)
    assert log[: len(first)] == first
    assert [(r["stage"], r["step"]) for r in log[len(first) :]] == [(3, 1), (3, 2), ("check", 5)]
    assert torch.load(tmp_path / "sight.pt", weights_only=True)["config"] == asdict(three)
    with pytest.raises(ValueError, match=r"holds a run of other settings \(recaption_lr differ\)"):
        train_sight(tiny_embedded_vlm()[0], proc, replace(three, recaption_lr=1e-3), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"holds a run of other settings \(answer_steps differ\)"):
        train_sight(tiny_embedded_vlm()[0], proc, replace(three, answer_steps=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"holds a run of other settings \(recaption_more differ\)"):
        train_sight(tiny_embedded_vlm()[0], proc, replace(three, recaption_more=[]), tmp_path, progress=False)
    after = torch.load(tmp_path / "sight.pt", weights_only=True)["vision"]
    assert any(not torch.equal(v, moved[k]) for k, v in after.items())  # step 3 moved the eyes


def test_monotonic_alignment_puts_spaces_only_where_the_caption_has_them():
    table = torch.randn(50, 8)
    scale = table.pow(2).mean().item()
    labels = torch.tensor([[3, 4, 9, 7], [5, 6, 7, 7]])  # 7: the space (the second caption is two tokens long)
    lengths = torch.tensor([3, 2])
    spaced = torch.tensor([[True, False, True, True, True], [True, True, True, True, True]])  # "3|4": no gap
    e = table[torch.tensor([[7, 3, 4, 7, 9, 7], [5, 7, 7, 6, 7, 7]])]  # each caption, in order, spaces between
    good, parts = monotonic_caption_loss(e, labels, lengths, spaced, table, pad_id=7, scale=scale)
    assert parts["token_acc"] == 1.0 and good.item() < 0.05
    split = table[torch.tensor([[3, 7, 4, 9, 7, 7], [5, 6, 7, 7, 7, 7]])]  # a space inside "34": not a reading
    assert monotonic_caption_loss(split, labels, lengths, spaced, table, pad_id=7, scale=scale)[0] > good + 1
    wrong = table[torch.tensor([[7, 3, 8, 7, 9, 7], [5, 7, 7, 6, 7, 7]])]
    bad, parts = monotonic_caption_loss(wrong, labels, lengths, spaced, table, pad_id=7, scale=scale)
    assert bad > good + 0.5 and parts["token_acc"] == 0.8  # (per caption token: one of five wrong)
    e = e.clone().requires_grad_(True)
    monotonic_caption_loss(e + 0.3, labels, lengths, spaced, table, pad_id=7, scale=scale)[0].backward()
    assert torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


def test_monotonic_likelihood_is_the_probability_of_reading_the_caption():
    # Brute force over every output of 5 positions: the alignment sum must equal the total probability of the
    # outputs that read as the caption, even when the caption holds a space token of its own (7 here, as SmolLM2
    # writes " 9" as " " then "9"): counting one reading twice would let the likelihood pass 1.
    torch.manual_seed(0)
    table = torch.randn(10, 6)
    scale = table.pow(2).mean().item()
    labels, lengths = torch.tensor([[3, 7, 4]]), torch.tensor([3])  # "3", " ", "4"
    spaced = torch.tensor([[True, True, True, True]])  # spaces around the caption and at its own gap
    e = torch.randn(1, 5, 6) * 0.3 + table[torch.tensor([[7, 3, 7, 4, 7]])]
    loss, _ = monotonic_caption_loss(e, labels, lengths, spaced, table, pad_id=7, scale=scale, tau=1.0)
    cand = [3, 4, 7]
    dist = torch.cdist(e[0], table[cand]).pow(2) / (6 * scale)
    p = torch.softmax(-dist, -1)  # (5, 3): each position's distribution over the batch's tokens and the space

    def reads(out: tuple[int, ...]) -> bool:  # the caption, in order, with one or more spaces only at its gaps
        text = "".join({3: "3", 4: "4", 7: " "}[t] for t in out)
        return text.strip(" ").replace(" " * 2, " ").replace(" " * 2, " ") == "3 4"

    total = sum(
        math.prod(p[t, cand.index(o)].item() for t, o in enumerate(out))
        for out in itertools.product(cand, repeat=5)
        if reads(out)
    )
    assert math.isclose(math.exp(-3 * loss.item()), total, rel_tol=1e-4)


def test_caption_labels_open_gaps_at_the_captions_whitespace():
    _, proc = tiny_embedded_vlm()
    tok = proc.tokenizer
    labels, lengths, spaced = caption_labels(tok, ["Target: 19. Current: 4.", "Cards: 3"], 196)
    for b, text in enumerate(["Target: 19. Current: 4.", "Cards: 3"]):
        ids = labels[b, : lengths[b]].tolist()
        assert tok.decode(ids) == text
        pieces = [tok.decode([i]) for i in ids]
        gaps = {"".join(pieces[:j]) for j in range(1, len(ids)) if spaced[b, j]}
        assert all(g.endswith(" ") or text[len(g)] == " " for g in gaps)  # a gap only at the caption's spaces
        assert spaced[b, 0] and spaced[b, lengths[b] :].all()


def test_sight_with_monotonic_alignment_trains_and_is_scored(tmp_path):
    cfg = SightConfig(tasks=["NumberLine", "Blackjack"], tower=TINY_TOWER, caption_steps=2, caption_batch=2,
                      answer_steps=0, recaption_steps=0, alignment="monotonic", check_renders=1)  # fmt: skip
    vlm, proc = tiny_embedded_vlm()
    log = train_sight(vlm, proc, cfg, tmp_path, progress=False)
    assert [r["stage"] for r in log] == [1, 1, "check"] and all(math.isfinite(r["loss"]) for r in log[:2])
    assert 0 <= log[-1]["tokens"] <= 1 and "Blackjack/dealer" in log[-1]
    scores = reading_accuracy(vlm, proc, ["NumberLine"], per_task=2, alignment="monotonic")
    assert scores["NumberLine"]["seen/target"]["n"] == 2
    with pytest.raises(ConfigError, match=r"^sight.alignment must be one of fixed, monotonic, not 'ctc'\.$"):
        SightConfig(alignment="ctc")


def test_the_build_log_ships_as_block_means_and_whole_checks():
    log = [{"stage": 1, "step": i + 1, "loss": float(i), "seconds": 0.5} for i in range(45)]
    log += [{"stage": "check", "step": 45, "tokens": 0.9, "NumberLine": 1.0}]
    log += [{"stage": 2, "step": i + 1, "loss": 2.0 + i, "seconds": 6.0} for i in range(3)]
    rows = compact_log(log, every=20)
    assert [(r["stage"], r["step"], r.get("updates")) for r in rows] == [
        (1, 20, 20), (1, 40, 20), (1, 45, 5), ("check", 45, None), (2, 3, 3)
    ]  # fmt: skip
    assert [r["loss"] for r in rows if r["stage"] != "check"] == [9.5, 29.5, 42.0, 3.0]
    assert rows[3] == log[45] and rows[0]["seconds"] == 0.5


def test_caption_loss_is_least_at_the_caption_embeddings():
    _, tok = tiny_llama()
    table = torch.randn(50, 8)
    ids = torch.tensor([[3, 4, 4, 9], [9, 3, 7, 7]])
    exact, parts = caption_loss(table[ids], ids, table, pad_id=7)
    assert parts["mse"] == 0.0 and parts["token_acc"] == 1.0
    given, _ = caption_loss(table[ids] + 0.1, ids, table, pad_id=7, scale=table.pow(2).mean().item())
    torch.testing.assert_close(given, caption_loss(table[ids] + 0.1, ids, table, pad_id=7)[0])
    off, _ = caption_loss(table[ids] + 0.5 * torch.randn(2, 4, 8), ids, table, pad_id=7)
    assert exact < off
    assert torch.equal(nearest_tokens(table[ids] + 0.01, table), ids)
    targets = caption_targets(tok, ["Target: 4. Current: 5.", ""], 12)
    space = tok(" ", add_special_tokens=False).input_ids[0]
    assert targets.shape == (2, 12) and (targets[1] == space).all()
    assert tok.decode(targets[0]).rstrip() == "Target: 4. Current: 5."


def test_answer_labels_score_only_the_answer_and_the_end_of_the_turn():
    _, proc = tiny_embedded_vlm()
    r = rd.reading("NumberLine", rd.TRAIN_SEED)
    inputs = answer_inputs(proc, [(r.image, "What is the target number?", "4"), (r.image, rd.TRANSCRIBE, r.caption)])
    pairs = zip(inputs["input_ids"], inputs["labels"], strict=True)
    scored = [proc.tokenizer.decode(row[lab != -100]) for row, lab in pairs]
    assert scored == ["4<|im_end|>", r.caption + "<|im_end|>"]


def test_sight_trains_only_the_vision_resumes_after_a_kill_and_is_scored(tmp_path, monkeypatch):
    cfg = SightConfig(
        tasks=["NumberLine", "Blackjack"],
        tower=TINY_TOWER,
        caption_steps=4,
        caption_batch=4,
        answer_steps=2,
        answer_batch=2,
        recaption_steps=2,
        check_every=2,
        check_renders=2,
        alignment="fixed",  # (monotonic's own test is above; the resume below is of a run begun before it)
    )
    straight, proc = tiny_embedded_vlm()
    lm_before = {k: v.clone() for k, v in straight.model.language_model.state_dict().items()}
    vision_before = {k: v.detach().clone() for k, v in vision_params(straight).items()}
    log = train_sight(straight, proc, cfg, tmp_path / "a", every=1, progress=False)
    assert [(r["stage"], r["step"]) for r in log] == [
        (1, 1), (1, 2), ("check", 2), (1, 3), (1, 4), ("check", 4), (2, 1), (2, 2), ("check", 6), (3, 1), (3, 2),
        ("check", 8),
    ]  # fmt: skip
    check = log[2]
    assert {"tokens", "NumberLine", "NumberLine/target", "Blackjack/dealer"} <= set(check)
    assert all(0 <= v <= 1 for k, v in check.items() if k not in ("stage", "step"))
    for k, v in straight.model.language_model.state_dict().items():
        assert torch.equal(v, lm_before[k]), k
    unchanged = [k for k, v in vision_params(straight).items() if torch.equal(v, vision_before[k])]
    assert unchanged == ["vision_tower.post_layernorm.weight", "vision_tower.post_layernorm.bias"]
    # (LLaVA reads the last layer's states, before SigLIP's final norm: the model never uses it)

    import vlmq_core.sight as sight

    calls = {"n": 0}
    step = sight.train_caption_step

    def dies_at_the_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    killed, proc2 = tiny_embedded_vlm()
    monkeypatch.setattr(sight, "train_caption_step", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        train_sight(killed, proc2, cfg, tmp_path / "b", every=1, progress=False)
    monkeypatch.setattr(sight, "train_caption_step", step)
    answer_step = sight.train_answer_step

    def dies_in_step_2(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sight, "train_answer_step", dies_in_step_2)  # killed again, between the two steps
    with pytest.raises(KeyboardInterrupt):
        train_sight(tiny_embedded_vlm()[0], proc2, cfg, tmp_path / "b", every=1, progress=False)
    monkeypatch.setattr(sight, "train_answer_step", answer_step)
    with pytest.raises(ValueError, match="holds a run of other settings \\(caption_lr differ\\)"):
        train_sight(tiny_embedded_vlm()[0], proc2, replace(cfg, caption_lr=1e-2), tmp_path / "b", progress=False)
    saved = torch.load(tmp_path / "b" / "sight.pt", weights_only=True)
    del saved["config"]["alignment"]  # a run begun before the setting existed was fixed, the default since changed
    torch.save(saved, tmp_path / "b" / "sight.pt")
    resumed, proc3 = tiny_embedded_vlm()
    log2 = train_sight(resumed, proc3, cfg, tmp_path / "b", every=1, progress=False)
    assert [r.get("loss", r.get("tokens")) for r in log2] == pytest.approx(
        [r.get("loss", r.get("tokens")) for r in log], rel=1e-5
    )
    for k, v in vision_state_dict(resumed).items():
        torch.testing.assert_close(v, vision_state_dict(straight)[k])

    scores = reading_accuracy(straight, proc, ["NumberLine", "BabyAI-GoToLocal"], per_task=3)
    ways = {f"{way}/{field}" for way in ("seen", "read", "asked") for field in ("target", "current")}
    assert set(scores["NumberLine"]) == ways
    assert set(scores["BabyAI-GoToLocal"]) >= {"seen/front", "read/front", "asked/front"}
    text = reading_accuracy(straight, proc, ["NumberLine"], per_task=3, from_text=True)
    assert set(text["NumberLine"]) == ways - {"seen/target", "seen/current"}  # no eyes to read with
    for row in scores.values():
        for s in row.values():
            assert s["n"] == 3 and 0 <= s["acc"] <= 1 and 0 < s["majority"] <= 1


def test_an_afsft_update_from_images_only_moves_the_adapters_and_the_critic(tmp_path):
    from vlmq_core.buffer import TurnBuffer
    from vlmq_core.collect import CollectConfig, SourceConfig, collect
    from vlmq_core.critic import CriticConfig
    from vlmq_core.trainer import TrainConfig, Trainer

    model, proc = tiny_embedded_vlm(seed=1)
    torch.manual_seed(0)
    policy = Policy(model, proc, True, PolicyConfig(critic=CriticConfig(hidden=32)), name="tiny-vlmq-vision")
    data = TurnBuffer(tmp_path / "data")
    play = CollectConfig(num_envs=2, max_reply_tokens=3, observation_text=False)
    collect(policy, play, SourceConfig("min_format", 2, 0), buffer=data, progress=False)
    collect(None, play, SourceConfig("random", 2, 7), buffer=data, progress=False)
    assert all(t.image is not None and "shown in the image" in t.prompt for t in data.turns)
    tower = {k: v.clone() for k, v in vision_state_dict(policy.model.get_base_model()).items()}
    lora = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    critic = {n: p.detach().clone() for n, p in policy.critic.named_parameters()}
    train = TrainConfig(steps=1, batch_size=3, grad_accum=1, lr_lora=1e-3, warmup_lora=1, warmup_critic=1)
    h = Trainer(policy, TurnBuffer(tmp_path / "data"), train).fit(progress=False)
    assert h[-1]["train/reply_tokens"] > 0
    assert all(not torch.equal(p, lora[n]) for n, p in policy.model.named_parameters() if p.requires_grad)
    assert all(not torch.equal(p, critic[n]) for n, p in policy.critic.named_parameters())
    assert all("language_model" in n for n in lora)  # adapters on the decoder only
    for k, v in vision_state_dict(policy.model.get_base_model()).items():
        assert torch.equal(v, tower[k]), k


def test_embedded_vlm_plays_babyai_only_from_the_point_of_view_it_learned():
    from vlmq_core.collect import CollectConfig, EnvSlots
    from vlmq_core.model import EMBEDDED_VLM

    model, proc = tiny_embedded_vlm()
    policy = Policy(model, proc, True, PolicyConfig(model=ModelConfig(name=EMBEDDED_VLM)), name="tiny embedded-vlm")
    full = CollectConfig(task="BabyAI-GoToLocal", num_envs=1)
    with pytest.raises(ConfigError, match=r"^embedded-vlm learned BabyAI from the agent's point of view .*view=pov\.$"):
        EnvSlots(full, 1, policy)
    with EnvSlots(replace(full, view="pov"), 1, policy) as slots:
        assert slots.envs[0].reset(seed=0)[0]["image"].size == (224, 224)
    EnvSlots(replace(full, use_images=False), 1, policy).close()  # no image, no view to mind
