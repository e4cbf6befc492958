"""Shared-prompt-prefix passes (vlmq_core.prefix): which prefix is shared, and the same hidden states and
LoRA gradients as the full pass."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_policy, randomize_lora, transitions
from vlmq_core.config import ConfigError, from_dict
from vlmq_core.model import ModelConfig, Policy, PolicyConfig
from vlmq_core.prefix import MIN_SHARED_PREFIX, shared_prefix_len
from vlmq_core.tokens import build_batch


def _batch(rows: list[list[int]], pad: int = 0) -> dict[str, torch.Tensor]:
    T = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


def test_shared_prefix_len_cases():
    head = list(range(1, 21))  # 20 shared tokens
    assert shared_prefix_len(_batch([head + [50, 51], head + [60], head + [70, 71, 72]])) == 20
    # a row that ends inside the common part limits the prefix to its real tokens
    assert shared_prefix_len(_batch([head + [50], head[:17]])) == 17
    assert shared_prefix_len(_batch([head + [50], head[:18] + [99]])) == 18
    # identical rows keep one token for the suffix pass
    assert shared_prefix_len(_batch([head, head])) == 19
    # too short, a single row, or inputs other than ids/mask (images): nothing shared
    assert shared_prefix_len(_batch([head[:5] + [1], head[:5] + [2]])) == 0
    assert shared_prefix_len(_batch([head + [1]])) == 0
    with_pixels = _batch([head + [1], head + [2]]) | {"pixel_values": torch.zeros(2, 3, 4, 4)}
    assert shared_prefix_len(with_pixels) == 0


@pytest.fixture(scope="module")
def pair():
    """The same tiny adapted text policy twice: prefix sharing on and off (eval mode: no dropout)."""
    policies = []
    for share in (True, False):
        policy = make_policy("llama")
        policy.cfg.model.share_prefix = share
        randomize_lora(policy, seed=3)
        policies.append(policy.eval())
    return policies


def test_same_hidden_states_and_lora_gradients(pair, text_turns):
    shared, full = pair
    batch = build_batch(shared, transitions(text_turns))
    P = shared_prefix_len(batch.inputs)
    assert P >= MIN_SHARED_PREFIX  # the chat template and task text are common to every NumberLine prompt
    proj = torch.randn(shared.model.get_output_embeddings().in_features)
    grads, hiddens = [], []
    for policy in pair:
        policy.model.zero_grad()
        h = policy.hidden(batch.inputs).flatten(0, 1)[batch.pred_pos]  # (N, d)
        (h @ proj).square().mean().backward()
        hiddens.append(h.detach())
        grads.append({n: p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(hiddens[0], hiddens[1], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        scale = grads[1][name].abs().max().item()
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5 * scale, rtol=1e-4)
    # the prefix's own LoRA parameters receive gradient through the shared pass (first layer's adapters)
    assert any(g.abs().sum() > 0 for n, g in grads[0].items() if "layers.0." in n)


def test_next_prompt_pass_is_shared_and_equal(pair, text_turns):
    shared, full = pair
    batch = build_batch(shared, transitions(text_turns))
    assert batch.next_inputs is not None and batch.next_inputs["input_ids"].shape[0] >= 2
    assert shared_prefix_len(batch.next_inputs) >= MIN_SHARED_PREFIX
    with torch.no_grad():
        a = shared.hidden(batch.next_inputs).flatten(0, 1)[batch.next_last_pos]
        b = full.hidden(batch.next_inputs).flatten(0, 1)[batch.next_last_pos]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_generate_shares_the_prefix_and_replies_as_left_padding(pair, text_turns, monkeypatch):
    """Batched generation runs the common prompt prefix once and gives the left-padded batch's greedy replies."""
    import vlmq_core.model as model_module

    shared, full = pair
    prompts = [t.prompt for t in text_turns] + ["A short one."]
    prefixes = ["", "[action]", "", "[action] +", ""][: len(prompts)]
    calls = []
    real = model_module.generate_with_shared_prefix

    def spy(model, rows, P, *args, **kwargs):
        calls.append(P)
        return real(model, rows, P, *args, **kwargs)

    monkeypatch.setattr(model_module, "generate_with_shared_prefix", spy)
    a = shared.generate(prompts, [None] * len(prompts), max_new_tokens=6, temperature=0.0, prefixes=prefixes)
    b = full.generate(prompts, [None] * len(prompts), max_new_tokens=6, temperature=0.0, prefixes=prefixes)
    assert len(calls) == 1 and calls[0] >= MIN_SHARED_PREFIX  # the shared path ran, for `shared` only
    assert a == b
    # sampling from the same RNG state draws the same replies
    torch.manual_seed(7)
    a = shared.generate(prompts, [None] * len(prompts), max_new_tokens=6, temperature=0.7)
    torch.manual_seed(7)
    b = full.generate(prompts, [None] * len(prompts), max_new_tokens=6, temperature=0.7)
    assert a == b


def test_share_prefix_auto_is_on_for_the_cpu_only(monkeypatch):
    """``auto`` (the default) shares on the CPU, where it is x2-3 faster, not on CUDA, where bench_update measured
    it twice as slow; true/false force it either way; VLM inputs never share."""
    policy = make_policy("llama")
    assert policy.cfg.model.share_prefix == "auto" and policy.shares_prefix
    policy.cfg.model.share_prefix = False
    assert not policy.shares_prefix
    monkeypatch.setattr(Policy, "device", property(lambda self: torch.device("cuda")))
    policy.cfg.model.share_prefix = "auto"
    assert not policy.shares_prefix
    policy.cfg.model.share_prefix = True
    assert policy.shares_prefix
    assert not make_policy("idefics3", cfg=PolicyConfig(model=ModelConfig(share_prefix=True))).shares_prefix
    assert from_dict(ModelConfig, {"share_prefix": "auto"}, "model.").share_prefix == "auto"
    assert from_dict(ModelConfig, {"share_prefix": False}, "model.").share_prefix is False
    with pytest.raises(ConfigError, match="model.share_prefix must be"):
        from_dict(ModelConfig, {"share_prefix": "yes"}, "model.")
