"""Turns to tokens (METHOD.md Eq. 1-2) on the real SmolLM2 tokenizer and real SmolVLM / LLaVA processors."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_policy, randomize_lora, transitions
from vlmq_core.tokens import build_batch, encode_prompt
from vlmq_core.turns import Turn, png_bytes

VLMS = ["idefics3", "llava"]
STOP = {"idefics3": "<end_of_utterance>", "llava": "<|im_end|>", "llama": "<|im_end|>"}
PROMPT_END = {"idefics3": "Assistant:", "llava": "<|im_start|>assistant\n", "llama": "<|im_start|>assistant\n"}


@pytest.fixture(scope="module")
def adapted_llama():
    """A tiny text policy whose LoRA adapters are non-zero, in eval mode (deterministic)."""
    policy = make_policy("llama")
    randomize_lora(policy)
    return policy.eval()


@pytest.fixture(scope="module", params=VLMS)
def adapted_vlm(request):
    """A tiny VLM policy (each family in turn) with non-zero LoRA adapters, in eval mode."""
    policy = make_policy(request.param)
    randomize_lora(policy)
    policy.family = request.param
    return policy.eval()


def family(policy) -> str:
    return getattr(policy, "family", "llama")


def check_positions(policy, turns: list[Turn]):
    """The checks shared by both families; returns the batch."""
    trans = transitions(turns)
    batch = build_batch(policy, trans)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    B, T = ids.shape
    assert B == len(turns)
    # h^j at pred_pos predicts the token right after it
    assert torch.equal(ids.flatten()[batch.pred_pos + 1], batch.tokens)
    assert mask.flatten()[batch.pred_pos + 1].all()
    # one stop token per turn, last in its turn, and it is the template's end-of-turn token
    stop_id = policy.tokenizer.convert_tokens_to_ids(STOP[family(policy)])
    assert policy.stop_token_id == stop_id
    assert batch.is_last.sum().item() == B
    assert (batch.tokens[batch.is_last] == stop_id).all()
    assert batch.turn_idx.tolist() == sorted(batch.turn_idx.tolist())
    for b, (turn, _) in enumerate(trans):
        sel = batch.turn_idx == b
        toks, pos = batch.tokens[sel], batch.pred_pos[sel]
        assert batch.is_last[sel].tolist() == [False] * (len(toks) - 1) + [True]
        assert policy.tokenizer.decode(toks[:-1]) == turn.reply
        assert (pos == torch.arange(pos[0], pos[0] + len(pos))).all()  # contiguous
        # the prompt alone: the first reply token is predicted by its last position
        prompt = encode_prompt(policy, turn.prompt, turn.pil_image())
        p_len = prompt["input_ids"].shape[1]
        assert pos[0].item() == b * T + p_len - 1
        assert torch.equal(ids[b, :p_len], prompt["input_ids"][0])
        text = policy.render_prompt(turn.prompt, turn.image is not None)
        assert text.endswith(PROMPT_END[family(policy)])
        # right padding after the stop token, masked out
        end = p_len + len(toks)
        assert mask[b, :end].all() and not mask[b, end:].any()
        assert (ids[b, end:] == policy.tokenizer.pad_token_id).all()
    # rewards and dones only on the stop token
    r, d = batch.token_rewards(), batch.token_dones()
    rewards = torch.tensor([t.reward for t in turns])
    assert torch.equal(r[batch.is_last], rewards) and (r[~batch.is_last] == 0).all()
    assert (
        torch.equal(d[batch.is_last], torch.tensor([float(t.done) for t in turns])) and (d[~batch.is_last] == 0).all()
    )
    return batch


def check_next_prompts(policy, turns: list[Turn], batch):
    trans = transitions(turns)
    live = [b for b, (t, _) in enumerate(trans) if not t.done]
    assert batch.next_turn_idx.tolist() == live
    assert batch.next_inputs is not None
    nids, nmask = batch.next_inputs["input_ids"], batch.next_inputs["attention_mask"]
    Tn = nids.shape[1]
    assert nids.shape[0] == len(live) == batch.next_last_pos.numel()
    for i, b in enumerate(live):
        nxt = trans[b][1]
        enc = encode_prompt(policy, nxt.prompt, nxt.pil_image())
        n_len = enc["input_ids"].shape[1]
        assert batch.next_last_pos[i].item() == i * Tn + n_len - 1
        assert torch.equal(nids[i, :n_len], enc["input_ids"][0])
        assert nmask[i, :n_len].all() and not nmask[i, n_len:].any()


def check_logits(policy, batch):
    """Logits from f_theta at pred_pos equal the model's own full forward at those positions (no off-by-one),
    and every turn gives the same logits unpadded, alone."""
    with torch.no_grad():
        full = policy.model(**batch.inputs, use_cache=False).logits.float().flatten(0, 1)[batch.pred_pos]
        ours = policy.lm_logits(policy.hidden(batch.inputs).flatten(0, 1)[batch.pred_pos])
    torch.testing.assert_close(ours, full, atol=1e-4, rtol=1e-4)
    # the predicted token has the same log-prob under both
    lp = ours.log_softmax(-1).gather(1, batch.tokens[:, None]).squeeze(1)
    lp_full = full.log_softmax(-1).gather(1, batch.tokens[:, None]).squeeze(1)
    torch.testing.assert_close(lp, lp_full, atol=1e-4, rtol=1e-4)
    # a shifted position gives different logits: the check above can fail
    shifted = policy.lm_logits(policy.hidden(batch.inputs).flatten(0, 1)[batch.pred_pos + 1]).detach()
    assert not torch.allclose(shifted, full, atol=1e-3)
    return ours


# ------------------------------------------------------------------------------------------ text model


def test_positions_text(adapted_llama, text_turns):
    check_positions(adapted_llama, text_turns)


def test_next_prompts_text(adapted_llama, text_turns):
    batch = build_batch(adapted_llama, transitions(text_turns))
    check_next_prompts(adapted_llama, text_turns, batch)
    ids = batch.next_inputs["input_ids"].flatten()[batch.next_last_pos]
    nl = adapted_llama.tokenizer("\n", add_special_tokens=False).input_ids
    assert ids.tolist() == nl * len(ids)  # each next prompt ends "<|im_start|>assistant\n"


def test_logits_text(adapted_llama, text_turns):
    batch = build_batch(adapted_llama, transitions(text_turns))
    assert len({int(m.sum()) for m in batch.inputs["attention_mask"]}) > 1  # turns of different lengths
    ours = check_logits(adapted_llama, batch)
    for b, turn in enumerate(text_turns):
        alone = build_batch(adapted_llama, [(turn, None if turn.done else text_turns[b + 1])])
        assert alone.inputs["input_ids"].shape[1] == int(batch.inputs["attention_mask"][b].sum())  # unpadded
        with torch.no_grad():
            single = adapted_llama.lm_logits(adapted_llama.hidden(alone.inputs).flatten(0, 1)[alone.pred_pos])
        torch.testing.assert_close(ours[batch.turn_idx == b], single, atol=1e-4, rtol=1e-4)


def test_terminal_turns_have_no_next_prompt(llama_policy, text_turns):
    done = [Turn(**{**vars(t), "done": True}) for t in text_turns]
    batch = build_batch(llama_policy, [(t, None) for t in done])
    assert batch.next_inputs is None
    assert batch.next_last_pos.numel() == 0 and batch.next_turn_idx.numel() == 0
    assert (batch.token_dones()[batch.is_last] == 1).all()
    # a mix: only the non-terminal turn gets a next prompt
    mixed = build_batch(llama_policy, [(done[0], None), (text_turns[1], text_turns[2]), (done[2], None)])
    assert mixed.next_turn_idx.tolist() == [1]
    assert mixed.next_inputs["input_ids"].shape[0] == 1


def test_non_terminal_turn_without_next_raises(llama_policy, text_turns):
    assert not text_turns[0].done
    with pytest.raises(ValueError, match="not terminal"):
        build_batch(llama_policy, [(text_turns[0], None)])


def test_batch_tensors_on_policy_device(llama_policy, text_turns):
    batch = build_batch(llama_policy, transitions(text_turns))
    for t in (batch.pred_pos, batch.tokens, batch.turn_idx, batch.is_last, batch.rewards, batch.dones):
        assert t.device == llama_policy.device
    assert batch.tokens.dtype == torch.long and batch.is_last.dtype == torch.bool
    assert batch.num_tokens == batch.tokens.numel()


# ------------------------------------------------------------------------------------------ VLM


def test_positions_vlm(adapted_vlm, image_turns):
    batch = check_positions(adapted_vlm, image_turns)
    pv = batch.inputs["pixel_values"]
    assert pv.shape[0] == len(image_turns)
    assert pv.shape[-2:] == ((64, 64) if family(adapted_vlm) == "idefics3" else (32, 32))
    ids = batch.inputs["input_ids"]
    image_id = adapted_vlm.processor.image_token_id
    assert image_id == adapted_vlm.model.config.image_token_id
    n_img = 16
    assert ((ids == image_id).sum(1) == n_img).all()  # <image> expanded, one image per turn
    for b in range(len(image_turns)):
        first = batch.pred_pos[batch.turn_idx == b][0].item() - b * ids.shape[1]
        assert (ids[b, :first] == image_id).sum() == n_img  # every image token comes before the reply
        assert not (ids[b, first + 1 :] == image_id).any()


def test_next_prompts_vlm(adapted_vlm, image_turns):
    batch = build_batch(adapted_vlm, transitions(image_turns))
    check_next_prompts(adapted_vlm, image_turns, batch)
    assert batch.next_inputs["pixel_values"].shape[0] == len(batch.next_turn_idx)
    last = batch.next_inputs["input_ids"].flatten()[batch.next_last_pos]
    end = adapted_vlm.tokenizer(PROMPT_END[family(adapted_vlm)], add_special_tokens=False).input_ids[-1]
    assert (last == end).all()


def test_logits_vlm(adapted_vlm, image_turns):
    batch = build_batch(adapted_vlm, transitions(image_turns))
    ours = check_logits(adapted_vlm, batch)
    # the image matters: a blank image changes the reply logits
    blank = dict(batch.inputs, pixel_values=torch.ones_like(batch.inputs["pixel_values"]))
    with torch.no_grad():
        other = adapted_vlm.lm_logits(adapted_vlm.hidden(blank).flatten(0, 1)[batch.pred_pos])
    assert not torch.allclose(ours, other, atol=1e-5)


def test_vlm_images_of_different_shapes_in_one_batch(image_turns):
    """With image splitting, a wide and a square image give different numbers of crops; the batch pads the
    crops (pixel values and pixel masks) and every turn gets the same logits as alone."""
    from PIL import Image

    policy = make_policy("idefics3-split")
    policy.family = "idefics3"
    randomize_lora(policy)
    policy.eval()
    shapes = [(128, 40), (128, 128), (40, 128)]
    turns = [
        Turn(**{**vars(t), "image": png_bytes(Image.new("RGB", wh, (60 * i, 90, 200))), "done": True})
        for i, (t, wh) in enumerate(zip(image_turns, shapes, strict=True))
    ]
    crops = []
    singles = []
    for t in turns:
        alone = build_batch(policy, [(t, None)])
        crops.append(alone.inputs["pixel_values"].shape[1])
        with torch.no_grad():
            singles.append(policy.lm_logits(policy.hidden(alone.inputs).flatten(0, 1)[alone.pred_pos]))
    assert len(set(crops)) > 1
    batch = check_positions(policy, turns)
    assert batch.inputs["pixel_values"].shape[1] == batch.inputs["pixel_attention_mask"].shape[1] == max(crops)
    with torch.no_grad():
        both = policy.lm_logits(policy.hidden(batch.inputs).flatten(0, 1)[batch.pred_pos])
    torch.testing.assert_close(both, torch.cat(singles), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "idefics3"])
def test_the_token_cache_tokenizes_each_prompt_and_reply_once_and_changes_nothing(request, family, monkeypatch):
    """A minibatch is a gather of cached ids plus padding: the same tensors as tokenizing afresh, and on a second
    pass over the same turns no tokenizer, processor or PNG decoder runs."""
    from vlmq_core import tokens as tokens_module
    from vlmq_core.tokens import TokenCache

    policy = request.getfixturevalue(f"{family}_policy")
    turns = request.getfixturevalue("text_turns" if family == "llama" else "image_turns")
    trans = transitions(turns)
    cache = TokenCache(policy)
    cached, fresh = build_batch(policy, trans, cache), build_batch(policy, trans)
    for name in ("pred_pos", "tokens", "turn_idx", "is_last", "next_last_pos", "next_turn_idx"):
        assert torch.equal(getattr(cached, name), getattr(fresh, name)), name
    for inputs in ("inputs", "next_inputs"):
        a, b = getattr(cached, inputs), getattr(fresh, inputs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), inputs
    assert cache.misses == len(turns)  # each prompt once: the next prompts are the same turns' prompts

    calls = []
    monkeypatch.setattr(tokens_module, "encode_prompt", lambda *a: calls.append("prompt"))
    monkeypatch.setattr(tokens_module, "encode_reply", lambda *a: calls.append("reply"))
    monkeypatch.setattr(Turn, "decode_image", staticmethod(lambda data: calls.append("png")))
    again = build_batch(policy, trans, cache)
    assert calls == [] and torch.equal(again.inputs["input_ids"], fresh.inputs["input_ids"])


def test_the_token_cache_keeps_to_its_memory_budget(image_turns, idefics3_policy):
    from vlmq_core.tokens import TokenCache

    cache = TokenCache(idefics3_policy, max_bytes=1)
    for turn in image_turns:
        cache.prompt(turn.prompt, turn.image)
    assert len(cache._prompts) == 1  # the newest entry stays even when alone over the budget
    cache.prompt(image_turns[0].prompt, image_turns[0].image)
    assert cache.misses == len(image_turns) + 1


def test_padded_shapes_for_compiled_passes_change_no_index(text_turns, adapted_llama):
    """``bucket`` rounds lengths up and ``next_rows`` adds copies of the first next prompt: every index still points
    at the same token and state."""
    trans = transitions(text_turns)
    plain = build_batch(adapted_llama, trans)
    padded = build_batch(adapted_llama, trans, bucket=64, next_rows=8)
    assert padded.inputs["input_ids"].shape[1] % 64 == 0 and padded.next_inputs["input_ids"].shape[1] % 64 == 0
    assert padded.next_inputs["input_ids"].shape[0] == 8
    h, hp = adapted_llama.hidden(plain.inputs), adapted_llama.hidden(padded.inputs)
    torch.testing.assert_close(hp.flatten(0, 1)[padded.pred_pos], h.flatten(0, 1)[plain.pred_pos])
    n, nq = adapted_llama.hidden(plain.next_inputs), adapted_llama.hidden(padded.next_inputs)
    torch.testing.assert_close(nq.flatten(0, 1)[padded.next_last_pos], n.flatten(0, 1)[plain.next_last_pos])
    assert torch.equal(padded.tokens, plain.tokens) and torch.equal(padded.next_turn_idx, plain.next_turn_idx)
