"""LoRA on the top layers and the frozen layers' output kept per turn (vlmq_core/frozen.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import episode, make_policy, randomize_lora, transitions
from vlmq_core.config import ConfigError
from vlmq_core.frozen import FrozenCache, LayerRange
from vlmq_core.model import LoRAConfig, PolicyConfig
from vlmq_core.prefix import MIN_SHARED_PREFIX
from vlmq_core.tokens import TokenCache, build_batch

FAMILIES = ["llama", "idefics3", "llava", "vlmqvision"]


def top_policy(family: str, seed: int = 0):
    """A tiny policy (2 decoder layers) with LoRA on the top layer only, non-zero adapters, eval mode."""
    policy = make_policy(family, seed, PolicyConfig(lora=LoRAConfig(layers=1)))
    randomize_lora(policy, seed)
    return policy.eval()


def turns_of(family: str):
    images = family != "llama"
    return transitions(episode(4, with_image=images, seed=1)) + transitions(episode(3, with_image=images, seed=5))


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_layers_adapts_only_the_top_decoder_layers(family):
    policy = top_policy(family)
    layers = policy.decoder.layers
    assert len(layers) == 2 and policy.frozen_layers == 1
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert any(p.requires_grad for p in layers[1].parameters())
    assert make_policy(family).frozen_layers == 0  # the paper's: every layer adapted, nothing to split
    deeper = make_policy(family, cfg=PolicyConfig(lora=LoRAConfig(layers=3)))  # a config meant for a deeper model
    adapters = [n for n, p in deeper.model.named_parameters() if p.requires_grad]
    assert deeper.frozen_layers == 0 and len([n for n in adapters if "lora_A" in n]) == 2 * 7  # every linear
    with pytest.raises(ConfigError, match="lora.layers must be >= 1"):
        LoRAConfig(layers=0)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_states_give_the_full_pass_hidden_states_and_gradients(family, share):
    policy = top_policy(family)
    policy.cfg.model.share_prefix = share
    trans = turns_of(family)
    tokens = TokenCache(policy)
    cache = FrozenCache(policy, tokens, 1 << 30)
    batch = cache.attach(build_batch(policy, trans, tokens), trans)
    mask = batch.inputs["attention_mask"].bool()
    torch.testing.assert_close(policy.hidden(batch.inputs, batch.lower)[mask], policy.hidden(batch.inputs)[mask])
    nmask = batch.next_inputs["attention_mask"].bool()
    torch.testing.assert_close(
        policy.hidden(batch.next_inputs, batch.next_lower)[nmask], policy.hidden(batch.next_inputs)[nmask]
    )
    grads = []
    for lower in (None, batch.lower):
        policy.model.zero_grad(set_to_none=True)
        (policy.hidden(batch.inputs, lower)[mask] ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)
    assert cache.misses == len(trans) and cache.hits == len([t for t, _ in trans if not t.done])  # next = next turn


@pytest.mark.parametrize("family", FAMILIES)
def test_text_turns_of_any_model_share_the_anchor_prefix(family):
    """Text-only turns (a VLM too, with collect.use_images=false) run only their own tokens after the anchor's
    prefix, and still give the full pass's states."""
    policy = top_policy(family)
    trans = turns_of("llama")  # no images
    tokens = TokenCache(policy)
    cache = FrozenCache(policy, tokens, 1 << 30)
    batch = cache.attach(build_batch(policy, trans, tokens), trans)
    assert all(P >= MIN_SHARED_PREFIX for P, _ in cache._entries.values())
    mask = batch.inputs["attention_mask"].bool()
    torch.testing.assert_close(policy.hidden(batch.inputs, batch.lower)[mask], policy.hidden(batch.inputs)[mask])


def test_a_turn_is_computed_once_on_its_own_tokens_after_the_anchor_prefix():
    policy = top_policy("llama")
    trans = turns_of("llama")
    tokens = TokenCache(policy)
    cache = FrozenCache(policy, tokens, 1 << 30)
    cache.attach(build_batch(policy, trans[:3], tokens), trans[:3])
    assert list(cache.anchors) == [trans[0][0].task]
    prefixes = [P for P, _ in cache._entries.values()]
    assert prefixes[0] == len(cache.anchors[trans[0][0].task].ids) - 1  # the anchor's own turn: one token left
    assert all(P >= MIN_SHARED_PREFIX for P in prefixes)  # every later turn runs only its own tokens
    misses = cache.misses
    cache.attach(build_batch(policy, trans[:3], tokens), trans[:3])
    assert cache.misses == misses  # nothing computed twice


def test_cached_states_do_not_depend_on_the_minibatch_and_are_rebuilt_the_same_after_a_resume():
    """A resumed run's cache starts empty and meets turns in other minibatches: it must rebuild the same values
    bitwise (each turn alone, from the same anchor), so a resumed run continues exactly."""
    policy = top_policy("llama")
    trans = turns_of("llama")
    turns = [t for t, _ in trans]
    first = FrozenCache(policy, TokenCache(policy), 1 << 30)
    for t, _ in trans:
        first.states(t)
    second = FrozenCache(policy, TokenCache(policy), 1 << 30)
    second.load_state_dict(first.state_dict())
    for t in reversed(turns):
        assert torch.equal(second.states(t), first.states(t))


def test_the_memory_budget_drops_the_least_recently_used_turns():
    policy = top_policy("llama")
    turns = [t for t, _ in turns_of("llama")]
    full = FrozenCache(policy, TokenCache(policy), 1 << 30)
    values = [full.states(t) for t in turns]
    one = max(rest.numel() * rest.element_size() for _, rest in full._entries.values())
    small = FrozenCache(policy, TokenCache(policy), 2 * one)
    for t in turns:
        small.states(t)
    assert small.bytes <= 2 * one and len(small._entries) < len(turns)
    assert torch.equal(small.states(turns[0]), values[0]) and small.misses == len(turns) + 1  # dropped, recomputed


def test_a_split_that_does_not_reproduce_the_model_is_refused():
    policy = top_policy("llama")
    policy.__dict__["top"] = LayerRange(policy.decoder, 0, 2)  # a broken split: every layer again on x_L
    trans = turns_of("llama")
    tokens = TokenCache(policy)
    with pytest.raises(ConfigError, match="layer_cache_gb=0"):
        FrozenCache(policy, tokens, 1 << 30).attach(build_batch(policy, trans, tokens), trans)


def test_mixed_attention_types_are_refused_with_the_fix():
    policy = top_policy("llama")
    policy.decoder.config.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(ConfigError, match="mixes attention types.*layer_cache_gb=0"):
        FrozenCache(policy, TokenCache(policy), 1 << 30)
    with pytest.raises(ConfigError, match="no frozen layers"):
        FrozenCache(make_policy("llama"), TokenCache(make_policy("llama")), 1 << 30)
