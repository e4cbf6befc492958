"""Policy: LoRA placement, frozen base, critic shape, stop tokens, generation, save/load, loading errors."""

from __future__ import annotations

import time

import pytest
import torch

from tests.conftest import make_policy, randomize_lora
from vlmq_core.critic import CriticConfig
from vlmq_core.model import (
    LoRAConfig,
    ModelConfig,
    ModelLoadError,
    Policy,
    PolicyConfig,
    load_backbone,
    load_checkpoint,
    load_policy,
)

FAMILIES = ["llama", "idefics3", "llava", "vlmqvision"]
VLMS = ("idefics3", "llava", "vlmqvision")
STOP = {"llama": "<|im_end|>", "idefics3": "<end_of_utterance>", "llava": "<|im_end|>", "vlmqvision": "<|im_end|>"}
VISION = {"idefics3": ("vision_model", "connector"), "llava": ("vision_tower", "multi_modal_projector")}
VISION["vlmqvision"] = VISION["llava"]


def policy_of(request, family: str) -> Policy:
    return request.getfixturevalue(f"{family}_policy")


def images(n: int, size: int = 300) -> list:
    from PIL import Image

    return [Image.new("RGB", (size, size), (40 * i, 200, 255 - 40 * i)) for i in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_only_on_text_decoder(request, family):
    policy = policy_of(request, family)
    lora = [n for n, _ in policy.model.named_parameters() if "lora_" in n]
    assert lora
    assert not [n for n in lora if any(k in n for k in ("vision", "connector", "projector", "lm_head", "embed"))]
    base = policy.model.get_base_model()
    decoder = base.get_decoder()
    prefix = next(n for n, m in base.named_modules() if m is decoder)
    assert (
        prefix
        == {
            "llama": "model",
            "idefics3": "model.text_model",
            "llava": "model.language_model",
            "vlmqvision": "model.language_model",
        }[family]
    )
    adapted = [n for n, m in base.named_modules() if hasattr(m, "lora_A")]
    assert len(adapted) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(n.startswith(prefix + ".layers.") for n in adapted)
    assert {n.rsplit(".", 1)[1] for n in adapted} == {f"{k}_proj" for k in "q k v o gate up down".split()}
    for part in VISION.get(family, ()):
        module = getattr(base.model, part)
        assert sum(1 for _ in module.parameters()) > 0
        assert not any(hasattr(m, "lora_A") for m in module.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_base_frozen_and_trainable_groups(request, family):
    policy = policy_of(request, family)
    for n, p in policy.model.named_parameters():
        assert p.requires_grad == ("lora_" in n), n
    groups = policy.trainable_parameters()
    lora_ids = {id(p) for n, p in policy.model.named_parameters() if "lora_" in n}
    assert {id(p) for p in groups["lora"]} == lora_ids
    assert {id(p) for p in groups["critic"]} == {id(p) for p in policy.critic.parameters()}
    assert not {id(p) for p in policy.target_critic.parameters()} & {id(p) for g in groups.values() for p in g}
    assert all(not p.requires_grad for p in policy.target_critic.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_critic_shape_matches_lm_head(request, family):
    policy = policy_of(request, family)
    head = policy.model.get_output_embeddings()
    first, last = policy.critic.net[0], policy.critic.last
    assert (first.in_features, first.out_features) == (head.in_features, 400) == (64, 400)
    assert (last.in_features, last.out_features) == (400, head.out_features)
    assert policy.vocab_size == head.out_features == len(policy.tokenizer)
    h = torch.randn(5, 64)
    assert policy.q_values(h).shape == policy.lm_logits(h).shape == (5, head.out_features)
    assert policy.lm_logits(h).dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_token(request, family):
    policy = policy_of(request, family)
    assert policy.tokenizer.convert_ids_to_tokens(policy.stop_token_id) == STOP[family]
    assert policy.tokenizer.pad_token_id is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_batch_with_prefixes(request, family):
    policy = policy_of(request, family)
    prompts = ["Hi", "A much longer prompt than the first one, with several more words in it.", "Target: 3."]
    imgs = images(3) if family in VLMS else [None] * 3
    prefixes = ["[action]", "", "[action] +"]
    out = policy.generate(prompts, imgs, max_new_tokens=4, temperature=0.7, prefixes=prefixes)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    for s, pre in zip(out, prefixes, strict=True):
        assert s.startswith(pre)
    assert policy.tokenizer.padding_side == "right"  # restored for training batches
    # left padding: greedy replies in a batch equal those generated one by one
    batch = policy.generate(prompts, imgs, max_new_tokens=3, temperature=0.0)
    alone = [
        policy.generate([p], [im], max_new_tokens=3, temperature=0.0)[0] for p, im in zip(prompts, imgs, strict=True)
    ]
    assert batch == alone
    assert policy.generate(prompts[:1], imgs[:1], max_new_tokens=3, temperature=0.0) == alone[:1]


def test_static_cache_generation_replies_as_the_dynamic_one(llama_policy):
    """``model.generate=static``: a fixed-size cache and a compiled decode step (here on a CPU), prompts padded to 64
    tokens and the batch to 4 rows; the greedy replies are the dynamic cache's."""
    prompts = ["Hi", "A much longer prompt than the first one, with several more words in it.", "Target: 3."]
    dynamic = llama_policy.generate(prompts, [None] * 3, max_new_tokens=4, temperature=0.0)
    llama_policy.cfg.model.generate = "static"
    try:
        static = llama_policy.generate(prompts, [None] * 3, max_new_tokens=4, temperature=0.0)
    finally:
        llama_policy.cfg.model.generate = "auto"
    assert static == dynamic


def perturb(policy: Policy, seed: int) -> None:
    """Random LoRA, critic and target weights and PopArt statistics: a 'trained' policy."""
    randomize_lora(policy, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in [*policy.critic.parameters(), *policy.target_critic.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        policy.popart.mu.fill_(1.5)
        policy.popart.nu.fill_(30.0)
        d = policy.whiten.offset.numel()
        policy.whiten.observe(torch.randn(4 * d, d, generator=g) * 3 + 1)
        policy.whiten.refresh([policy.critic, policy.target_critic])


def outputs(policy: Policy, family: str):
    policy.eval()
    if family in VLMS:
        text = policy.render_prompt("Where is the number?", True)
        inputs = policy.processor(text=[text], images=[images(1)], return_tensors="pt")
    else:
        inputs = policy.tokenizer([policy.render_prompt("Where is the number?", False)], return_tensors="pt")
    with torch.no_grad():
        h = policy.hidden(dict(inputs))[0, -3:]
        return policy.lm_logits(h), policy.q_values(h), policy.q_values(h, target=True), policy.popart.sigma.clone()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_roundtrip(tmp_path, family):
    cfg = PolicyConfig(critic=CriticConfig(whiten=True))
    src = make_policy(family, cfg=cfg)
    perturb(src, seed=3)
    src.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "policy.json").is_file()
    dst = make_policy(family, cfg=cfg)
    before = outputs(dst, family)
    want = outputs(src, family)
    assert not torch.allclose(before[0], want[0])  # a fresh policy differs: the check can fail
    dst.load(tmp_path / "ckpt")
    got = outputs(dst, family)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert dst.popart.mu.item() == 1.5
    assert int(dst.whiten.refreshes) == 1 and torch.equal(dst.whiten.matrix, src.whiten.matrix)


def test_whitened_checkpoint_into_an_unwhitened_policy_raises(tmp_path):
    src = make_policy("llama", cfg=PolicyConfig(critic=CriticConfig(whiten=True)))
    perturb(src, seed=3)
    src.save(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="whiten=True"):
        make_policy("llama").load(tmp_path / "ckpt")


def test_load_checkpoint_rebuilds_the_saved_policy(tmp_path, tiny_folders):
    cfg = PolicyConfig(
        model=ModelConfig(name=tiny_folders["llama"], device="cpu"),
        lora=LoRAConfig(r=4, alpha=8),
        critic=CriticConfig(whiten=True, hidden=24, init_q=-3.0),
    )
    src = load_policy(cfg)
    perturb(src, seed=5)
    src.save(tmp_path / "run" / "checkpoint")
    want = outputs(src, "llama")
    for folder in (tmp_path / "run" / "checkpoint", tmp_path / "run"):  # the folder, or a trainer's run_dir
        got_policy = load_checkpoint(folder, device="cpu")
        assert got_policy.cfg == cfg and got_policy.name == tiny_folders["llama"]
        for a, b in zip(outputs(got_policy, "llama"), want, strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_load_checkpoint_bad_folder_raises(tmp_path, llama_policy):
    with pytest.raises(FileNotFoundError, match="policy.json is missing"):
        load_checkpoint(tmp_path)
    llama_policy.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "policy.json").write_text('{"config": {"model": {"nmae": "x"}}}')
    with pytest.raises(ValueError, match="not a valid policy description"):
        load_checkpoint(tmp_path / "ckpt")


def test_load_incomplete_checkpoint_raises(tmp_path, llama_policy):
    with pytest.raises(FileNotFoundError, match="not a complete vlmq policy checkpoint"):
        llama_policy.load(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_policy_from_local_folder(tiny_folders, family):
    cfg = PolicyConfig(model=ModelConfig(name=tiny_folders[family], device="cpu"))
    policy = load_policy(cfg)
    assert policy.is_vlm == (family in VLMS)
    assert policy.name == tiny_folders[family]
    assert policy.tokenizer.convert_ids_to_tokens(policy.stop_token_id) == STOP[family]
    assert policy.vocab_size == len(policy.tokenizer)
    # same weights as the in-memory tiny model (same seed)
    ref = make_policy(family)
    torch.testing.assert_close(outputs(policy, family)[0], outputs(ref, family)[0], atol=1e-5, rtol=1e-5)
    kinds = {
        "llama": "TokenizersBackend",
        "idefics3": "Idefics3Processor",
        "llava": "LlavaProcessor",
        "vlmqvision": "LlavaProcessor",
    }
    assert type(policy.processor).__name__ == kinds[family]
    if family == "idefics3":
        assert policy.processor.image_seq_len == 16


def test_missing_local_folder_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_backbone(ModelConfig(name=str(tmp_path / "nope")))


def test_unknown_hub_id_raises_quickly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    t = time.time()
    with pytest.raises(ModelLoadError, match="Could not load a model config") as info:
        load_backbone(ModelConfig(name="vlmq-tests/this-model-does-not-exist"))
    assert time.time() - t < 20
    assert "embedded" in str(info.value) and "local folder" in str(info.value)


def test_quantization_on_cpu_raises(tiny_folders):
    with pytest.raises(ModelLoadError, match="needs CUDA"):
        load_backbone(ModelConfig(name=tiny_folders["llama"], device="cpu", quantization="4bit"))


@pytest.mark.slow
def test_embedded_model(embedded_policy):
    policy = embedded_policy
    assert policy.tokenizer.convert_ids_to_tokens(policy.stop_token_id) == "<|im_end|>"
    assert policy.vocab_size == 49152 == len(policy.tokenizer)
    assert not policy.is_vlm
    out = policy.generate(["What is 2+2? Answer with a number."], [None], max_new_tokens=8, temperature=0.0)
    assert isinstance(out[0], str) and out[0].strip()
