"""The offline trainer: parameter updates, checkpoints, resume after a kill, SFT without a critic."""

import json

import pytest
import torch

from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, SourceConfig, collect
from vlmq_core.config import ConfigError
from vlmq_core.critic import CriticConfig
from vlmq_core.losses import LossConfig
from vlmq_core.model import LoRAConfig, Policy, PolicyConfig, decoder_pass
from vlmq_core.rundir import RunDir, load_history
from vlmq_core.tiny import tiny_llama
from vlmq_core.trainer import TrainConfig, Trainer

SMALL_CRITIC = CriticConfig(hidden=32)
"""A narrow critic: its |V|-wide output layer (49152 tokens) dominates a tiny model's update time."""


def make_policy(cfg: PolicyConfig | None = None) -> Policy:
    model, tok = tiny_llama(seed=0)
    torch.manual_seed(0)
    return Policy(model, tok, False, cfg or PolicyConfig(critic=SMALL_CRITIC))


def cfg(steps=4, **kw) -> TrainConfig:
    base = {"steps": steps, "batch_size": 2, "grad_accum": 2, "lr_lora": 1e-3, "warmup_lora": 2, "warmup_critic": 2}
    return TrainConfig(**{**base, "checkpoint_every": 2, **kw})


def trainable(policy: Policy) -> dict[str, torch.Tensor]:
    named = {f"m.{n}": p for n, p in policy.model.named_parameters() if p.requires_grad}
    named |= {f"c.{n}": p for n, p in policy.critic.named_parameters()}
    named |= {f"t.{n}": p for n, p in policy.target_critic.named_parameters()}
    return {k: v.detach().clone() for k, v in named.items()} | {"popart.mu": policy.popart.mu.clone()}


def fit_in(run_dir, trainer: Trainer) -> list[dict]:
    """`vlmq train`'s loop: the trainer resumed from `run_dir` (when it holds a checkpoint), then fitted there."""
    trainer, run = resume_in(run_dir, trainer)
    return trainer.fit(progress=False, run=run)


def resume_in(run_dir, trainer: Trainer) -> tuple[Trainer, RunDir]:
    """The trainer resumed from `run_dir`'s newest checkpoint, if any, and the run's folder."""
    run = RunDir(run_dir)
    run.resume(trainer)
    return trainer, run


def test_fit_writes_metrics_and_a_checkpoint(tmp_path, buffer):
    policy = make_policy()
    before = trainable(policy)
    history = fit_in(tmp_path, Trainer(policy, buffer, cfg(steps=3), LossConfig(filter_start_step=1)))
    assert [m["step"] for m in history] == [1, 2, 3]
    assert history[0]["train/beta"] == float("-inf") and history[1]["train/beta"] == 0.0
    assert {"train/loss", "actor/kept_frac", "critic/loss", "train/grad_norm", "train/lr_lora"} <= set(history[-1])
    assert history[0]["train/lr_lora"] == pytest.approx(1e-3)  # warmup: (0+1)/2 after the first scheduler step
    assert (tmp_path / "checkpoint" / "trainer.pt").is_file() and not (tmp_path / "checkpoint.tmp").exists()
    assert [m["step"] for m in load_history(tmp_path)] == [1, 2, 3]
    after = trainable(policy)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every LoRA, critic and target-critic tensor moved


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, buffer):
    straight = make_policy()
    h_straight = fit_in(tmp_path / "a", Trainer(straight, buffer, cfg()))

    first = make_policy()
    fit_in(tmp_path / "b", Trainer(first, buffer, cfg(steps=2)))
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # a step that ran after the checkpoint, then a kill
        f.write(json.dumps({"step": 3, "train/loss": 123.0}) + "\n" + '{"step": 4, "trai')
    resumed = make_policy()
    trainer, run = resume_in(tmp_path / "b", Trainer(resumed, buffer, cfg()))
    assert trainer.step == 2 and [m["step"] for m in trainer.history] == [1, 2]
    h_resumed = trainer.fit(progress=False, run=run)

    assert [m["train/loss"] for m in h_resumed] == pytest.approx([m["train/loss"] for m in h_straight], rel=1e-5)
    for got, want in zip(h_resumed, h_straight, strict=True):  # every metric column, time aside
        want = {k: v for k, v in want.items() if not k.startswith("time/")}
        assert {k: v for k, v in got.items() if not k.startswith("time/")} == pytest.approx(want, rel=1e-5, abs=1e-7)
    a, b = trainable(straight), trainable(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_whitened_critic_calibrates_refreshes_and_resumes(tmp_path, buffer):
    pcfg = PolicyConfig(critic=CriticConfig(hidden=32, whiten=True))
    wcfg = {"whiten_every": 2, "whiten_calib_turns": 3}
    straight = make_policy(pcfg)
    h_straight = fit_in(tmp_path / "a", Trainer(straight, buffer, cfg(**wcfg)))
    w = straight.whiten
    assert int(w.refreshes) == 3  # calibration, then after updates 2 and 4
    assert float(w.count) > 0 and not torch.equal(w.matrix, torch.eye(len(w.offset)))

    fit_in(tmp_path / "b", Trainer(make_policy(pcfg), buffer, cfg(steps=2, **wcfg)))
    resumed = make_policy(pcfg)
    trainer, run = resume_in(tmp_path / "b", Trainer(resumed, buffer, cfg(**wcfg)))
    assert trainer.step == 2 and int(resumed.whiten.refreshes) == 2  # loaded, not calibrated again
    h_resumed = trainer.fit(progress=False, run=run)
    assert [m["train/loss"] for m in h_resumed] == pytest.approx([m["train/loss"] for m in h_straight], rel=1e-5)
    torch.testing.assert_close(resumed.whiten.matrix, w.matrix, rtol=1e-5, atol=1e-6)

    sft = make_policy(pcfg)  # plain SFT has no critic: nothing to calibrate
    Trainer(sft, buffer, cfg(steps=1), LossConfig(actor="sft", critic_weight=0.0)).fit(progress=False)
    assert int(sft.whiten.refreshes) == 0


def test_resume_uses_the_previous_checkpoint_when_killed_mid_write(tmp_path, buffer):
    policy = make_policy()
    fit_in(tmp_path, Trainer(policy, buffer, cfg(steps=2)))
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # killed between the two renames
    (tmp_path / "checkpoint.tmp").mkdir()  # and a half-written new one
    trainer, run = resume_in(tmp_path, Trainer(make_policy(), buffer, cfg(steps=2)))
    assert trainer.step == 2


def test_sft_trains_no_critic_and_maxq_runs(tmp_path, buffer):
    policy = make_policy()
    critic_before = {k: v.clone() for k, v in policy.critic.state_dict().items()}
    h = Trainer(policy, buffer, cfg(steps=2), LossConfig(actor="sft", critic_weight=0.0)).fit(progress=False)
    assert "critic/loss" not in h[-1] and h[-1]["actor/kept_frac"] == 1.0
    for k, v in policy.critic.state_dict().items():
        assert torch.equal(v, critic_before[k]), k
    h = Trainer(make_policy(), buffer, cfg(steps=1), LossConfig(actor="maxq")).fit(progress=False)
    assert "actor/maxq_loss" in h[-1]
    with pytest.raises(ConfigError, match="actor"):
        LossConfig(actor="ppo")


def test_a_dataset_written_with_one_model_trains_another(tmp_path):
    from vlmq_core.tiny import tiny_idefics3

    writer = make_policy()  # text-only tiny Llama writes replies; images are stored anyway
    data = TurnBuffer(tmp_path / "data")
    play = CollectConfig(num_envs=2, max_reply_tokens=3)
    collect(writer, play, SourceConfig("min_format", 2, 0), buffer=data, progress=False)
    collect(None, play, SourceConfig("random", 2, 7), buffer=data, progress=False)
    assert all(t.image is not None for t in data.turns)

    vlm_model, processor = tiny_idefics3(seed=1)
    torch.manual_seed(0)
    reader = Policy(vlm_model, processor, True, PolicyConfig(critic=SMALL_CRITIC), name="tiny-idefics3")
    before = trainable(reader)
    h = Trainer(reader, TurnBuffer(tmp_path / "data"), cfg(steps=1, batch_size=3, grad_accum=1)).fit(progress=False)
    assert h[-1]["train/reply_tokens"] > 0
    after = trainable(reader)
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_undefined_metrics_are_written_as_null_and_read_back_as_nan(tmp_path):
    """Rows go out as strict JSON (a NaN metric becomes null, nested ones too) and ``load_history`` gives NaN back,
    so a run's metrics file opens in jq or a browser and a resumed run still sees floats."""
    import math

    from vlmq_core.config import json_text

    row = {"epoch": 1, "online/agent_valid": math.nan, "x": [1.0, math.inf], "by": {"a": -math.inf, "b": 2}}
    assert json_text(row) == '{"epoch": 1, "online/agent_valid": null, "x": [1.0, null], "by": {"a": null, "b": 2}}'
    (tmp_path / "metrics.jsonl").write_text(json_text(row) + "\n")
    back = load_history(tmp_path, key="epoch")
    assert len(back) == 1 and math.isnan(back[0]["online/agent_valid"]) and back[0]["epoch"] == 1


def test_the_frozen_layer_cache_trains_as_the_full_pass_does_and_resumes(tmp_path, buffer):
    """LoRA on the top layer only: with the frozen layer's output cached per turn (train.layer_cache_gb > 0) the
    updates are those of running every layer (cache off), and a killed run resumes to the same weights."""
    pcfg = PolicyConfig(critic=CriticConfig(hidden=32, whiten=True), lora=LoRAConfig(layers=1))
    wcfg = {"whiten_every": 2, "whiten_calib_turns": 3}
    uncached = make_policy(pcfg)
    h_uncached = Trainer(uncached, buffer, cfg(layer_cache_gb=0, **wcfg)).fit(progress=False)
    cached = make_policy(pcfg)
    trainer, run = resume_in(tmp_path / "a", Trainer(cached, buffer, cfg(**wcfg)))
    assert trainer.frozen is not None
    h_cached = trainer.fit(progress=False, run=run)
    assert trainer.frozen.hits > 0 and trainer.frozen.anchors
    assert [m["train/loss"] for m in h_cached] == pytest.approx([m["train/loss"] for m in h_uncached], rel=1e-4)
    a, b = trainable(uncached), trainable(cached)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)

    fit_in(tmp_path / "b", Trainer(make_policy(pcfg), buffer, cfg(steps=2, **wcfg)))
    resumed = make_policy(pcfg)
    trainer, run = resume_in(tmp_path / "b", Trainer(resumed, buffer, cfg(**wcfg)))
    assert trainer.step == 2 and trainer.frozen.anchors  # the anchors come back with the checkpoint
    h_resumed = trainer.fit(progress=False, run=run)
    assert [m["train/loss"] for m in h_resumed] == [m["train/loss"] for m in h_cached]
    c = trainable(resumed)
    for k in b:
        assert torch.equal(c[k], b[k]), k


@pytest.mark.parametrize("layers", [None, 1])
def test_an_update_reads_no_device_value_until_its_metrics_row(buffer, monkeypatch, layers):
    """On a GPU each host read of a device value (``item``, ``float``, ``bool``, ``nonzero``, ``tolist``...) waits
    for the device and stalls the launch queue. vlmq's part of an update makes one, when its metrics row is made
    (``as_numbers``). transformers' eager mask code makes one more per forward pass (it checks whether the sequences
    are packed); a compiled pass traces that check away."""
    pcfg = PolicyConfig(critic=CriticConfig(hidden=32, whiten=True), lora=LoRAConfig(layers=layers))
    policy = make_policy(pcfg)
    policy.cfg.model.share_prefix = False  # as on CUDA (`auto`); on a CPU the shared prefix reads lengths: no cost
    trainer = Trainer(policy, buffer, cfg(steps=3, whiten_every=0, whiten_calib_turns=3))
    trainer.calibrate_critic_inputs(progress=False)
    trainer.train_step()  # first: fills the token and frozen-layer caches (host-side ids)
    reads = []
    for name in ("item", "tolist", "nonzero", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _original=original, **kw):
            import traceback

            frame = traceback.extract_stack(limit=2)[0]  # the code that read the value
            # the token cache reads the tokenizer's own (host) tensors; transformers is discussed above
            if not frame.filename.endswith(("/transformers/masking_utils.py", "/vlmq_core/tokens.py")):
                reads.append(f"{_name} {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.line}")
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, spy)
    metrics = trainer.train_step()
    monkeypatch.undo()
    assert len(reads) == 1 and reads[0].startswith("tolist trainer.py") and metrics["step"] == 2, "\n".join(reads)


def test_compiled_passes_train_as_the_eager_ones(buffer):
    """train.compile: the decoder passes of an update through torch.compile (``default`` here, on a CPU), shapes
    padded to repeat; the losses and weights are the eager run's (CUDA graphs are checked by scripts/gpu_paper.sh)."""
    pcfg = PolicyConfig(critic=CriticConfig(hidden=32), lora=LoRAConfig(layers=1, dropout=0.0))  # compiled RNG differs
    eager = make_policy(pcfg)
    h_eager = Trainer(eager, buffer, cfg(steps=2, layer_cache_gb=0)).fit(progress=False)
    compiled = make_policy(pcfg)
    trainer = Trainer(compiled, buffer, cfg(steps=2, layer_cache_gb=0, compile="default"))
    h_compiled = trainer.fit(progress=False)
    assert trainer._passes is not None and compiled._pass is decoder_pass  # eager again outside its updates
    assert [m["train/loss"] for m in h_compiled] == pytest.approx([m["train/loss"] for m in h_eager], rel=1e-4)
    a, b = trainable(eager), trainable(compiled)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    with pytest.raises(ConfigError, match="train.compile"):
        TrainConfig(compile="max")
