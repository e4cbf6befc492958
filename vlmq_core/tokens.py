"""Turns to tokens (METHOD.md Eq. 1-2), with the model's own chat template and processor.

A turn ``(p_t, i_t, a_t, r_t, p_{t+1}, i_{t+1}, d_t)`` becomes the sequence ``[p_t ; a_t ; stop]``. The ``l``
reply tokens (the stop token included) are predicted by the hidden states at positions
``len(p_t) - 1 ... len(p_t) + l - 2`` (Eq. 1). Reply tokens of the whole batch are packed into one flat
axis ``N`` so both heads run only where they are needed.

A :class:`TokenCache` keeps what the tokenizer and processor make of each prompt and reply, so a training update
gathers and pads ids it already has: datasets keep text (one dataset serves every model), ids are a cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmq_core.model import Policy
from vlmq_core.turns import Transition, Turn


@dataclass
class TokenBatch:
    """A minibatch of turns as token transitions. B turns, T padded length, N reply tokens in all."""

    inputs: dict[str, torch.Tensor]
    """Model inputs for ``[p_t ; a_t ; stop]``, right-padded: input_ids (B, T), attention_mask (B, T), pixels..."""
    pred_pos: torch.Tensor
    """(N,) flat index ``b * T + t`` of the hidden state h^j that predicts reply token a^{j+1} (Eq. 1)."""
    tokens: torch.Tensor
    """(N,) reply token ids a^{j+1} (the last of each turn is the stop token)."""
    turn_idx: torch.Tensor
    """(N,) index of the turn (0..B-1) each reply token belongs to; tokens of a turn are contiguous."""
    is_last: torch.Tensor
    """(N,) bool: the token is its turn's stop token, whose transition carries r_t and d_t."""
    stop_idx: torch.Tensor
    """(B,) index in N of each turn's stop token (``is_last.nonzero()``, computed on the host)."""
    rewards: torch.Tensor
    """(B,) turn rewards r_t."""
    dones: torch.Tensor
    """(B,) float 1.0 where the turn ends its episode (no bootstrap), else 0.0."""
    next_inputs: dict[str, torch.Tensor] | None
    """Model inputs for the next prompts p_{t+1} of the non-terminal turns (B', T'), or None if B' = 0."""
    next_last_pos: torch.Tensor
    """(B',) flat index of the last position of each next prompt: h_{t+1}^0 (Eq. 2)."""
    next_turn_idx: torch.Tensor
    """(B',) which turn each next prompt follows."""
    lower: torch.Tensor | None = None
    """(B, T, d) the frozen layers' output for `inputs` when a :class:`vlmq_core.frozen.FrozenCache` attached it:
    the passes then run only the top layers."""
    next_lower: torch.Tensor | None = None
    """(B', T', d) the same for `next_inputs`."""

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())

    def token_rewards(self) -> torch.Tensor:
        """(N,) r = 0 inside a reply, r_t on its stop token."""
        return torch.where(self.is_last, self.rewards[self.turn_idx], torch.zeros_like(self.rewards[self.turn_idx]))

    def token_dones(self) -> torch.Tensor:
        """(N,) d = 0 inside a reply, d_t on its stop token."""
        return torch.where(self.is_last, self.dones[self.turn_idx], torch.zeros_like(self.dones[self.turn_idx]))


def encode_prompt(policy: Policy, prompt: str, image) -> dict[str, torch.Tensor]:
    """Tokenise one prompt with the chat template (+ image through the processor): tensors with batch dim 1."""
    text = policy.render_prompt(prompt, image is not None)
    if policy.is_vlm:
        return dict(policy.processor(text=[text], images=[[image]] if image is not None else None, return_tensors="pt"))
    return dict(policy.tokenizer([text], return_tensors="pt", add_special_tokens=False))


def encode_reply(policy: Policy, reply: str) -> list[int]:
    """The reply's token ids followed by the stop token: the ``l`` actions of one turn."""
    return policy.tokenizer(reply, add_special_tokens=False).input_ids + [policy.stop_token_id]


def seen_tokens(policy: Policy, replies: Iterable[str], size: int, cache: TokenCache | None = None) -> torch.Tensor:
    """(size,) bool: the token ids some reply uses, as :func:`encode_reply` tokenizes it (the stop token too);
    `size` is the heads' vocabulary width (it may exceed the tokenizer's). With `cache` (a :class:`TokenCache` of
    this policy), a caller that rebuilds the mask tokenizes each distinct reply once."""
    seen = torch.zeros(size, dtype=torch.bool)
    for reply in set(replies):
        seen[cache.reply(reply) if cache is not None else encode_reply(policy, reply)] = True
    return seen


def _tensor_bytes(enc: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in enc.values() if isinstance(t, torch.Tensor))


class TokenCache:
    """What one policy's tokenizer and processor make of prompts and replies, each computed once.

    Prompts are keyed by their text and image bytes (the PNG of a :class:`Turn`, never decoded again on a hit),
    replies by their text. Entries are CPU tensors with batch dim 1, as :func:`encode_prompt` returns them; the
    least recently used prompts are dropped beyond `max_bytes` (processed images can be large), replies are kept.
    """

    def __init__(self, policy: Policy, max_bytes: int = 1 << 30):
        self.policy, self.max_bytes = policy, max_bytes
        self._prompts: OrderedDict[tuple[str, bytes | None], dict[str, torch.Tensor]] = OrderedDict()
        self._replies: dict[str, list[int]] = {}
        self.bytes = 0
        self.misses = 0

    def prompt(self, text: str, image: bytes | None) -> dict[str, torch.Tensor]:
        """:func:`encode_prompt` of a prompt and its PNG image (or None), from the cache when it is there."""
        key = (text, image)
        enc = self._prompts.get(key)
        if enc is not None:
            self._prompts.move_to_end(key)
            return enc
        self.misses += 1
        pil = Turn.decode_image(image) if image is not None else None
        enc = {k: v for k, v in encode_prompt(self.policy, text, pil).items() if isinstance(v, torch.Tensor)}
        self._prompts[key] = enc
        self.bytes += _tensor_bytes(enc)
        while self.bytes > self.max_bytes and len(self._prompts) > 1:
            _, old = self._prompts.popitem(last=False)
            self.bytes -= _tensor_bytes(old)
        return enc

    def reply(self, text: str) -> list[int]:
        """:func:`encode_reply` of a reply (its ids and the stop token), from the cache when it is there."""
        ids = self._replies.get(text)
        if ids is None:
            ids = self._replies[text] = encode_reply(self.policy, text)
        return ids

    def turn_ids(self, turn: Turn) -> list[int]:
        """The token ids of ``[p_t ; a_t ; stop]`` as a list (the image placeholders included)."""
        return self.turn(turn)["input_ids"][0].tolist()

    def turn(self, turn: Turn) -> dict[str, torch.Tensor]:
        """Model inputs of ``[p_t ; a_t ; stop]`` for one turn (batch dim 1, CPU)."""
        enc = dict(self.prompt(turn.prompt, turn.image))
        reply = torch.tensor(self.reply(turn.reply), dtype=enc["input_ids"].dtype)
        enc["input_ids"] = torch.cat([enc["input_ids"], reply[None]], dim=1)
        enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(reply)[None]], dim=1)
        return enc


def collate(policy: Policy, encoded: list[dict[str, torch.Tensor]], bucket: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad input_ids/attention_mask to the longest row, rounded up to a multiple of `bucket` (so compiled passes
    meet few shapes); concatenate every other tensor (pixels...) along the batch axis."""
    pad = policy.tokenizer.pad_token_id
    T = -(-max(e["input_ids"].shape[1] for e in encoded) // bucket) * bucket
    out = {
        "input_ids": torch.stack(
            [F.pad(e["input_ids"][0], (0, T - e["input_ids"].shape[1]), value=pad) for e in encoded]
        ),
        "attention_mask": torch.stack(
            [F.pad(e["attention_mask"][0], (0, T - e["attention_mask"].shape[1])) for e in encoded]
        ),
    }
    for key in encoded[0]:
        if key in out or encoded[0][key] is None:
            continue
        parts = [e[key] for e in encoded]
        crops = key in ("pixel_values", "pixel_attention_mask")
        if crops and parts[0].dim() >= 2 and len({p.shape[1] for p in parts}) > 1:
            # Idefics3-style (1, n_images, C, H, W) / (1, n_images, H, W): all-zero padding images are ignored
            n = max(p.shape[1] for p in parts)
            parts = [F.pad(p, (0, 0) * (p.dim() - 2) + (0, n - p.shape[1])) for p in parts]
        out[key] = torch.cat(parts, dim=0)
    return {k: v.to(policy.device) for k, v in out.items()}


def build_batch(
    policy: Policy,
    transitions: list[Transition],
    cache: TokenCache | None = None,
    bucket: int = 1,
    next_rows: int | None = None,
) -> TokenBatch:
    """Convert turn transitions ``(turn, next_turn)`` to a :class:`TokenBatch` (Eq. 1-2 inputs): a gather of each
    turn's ids from `cache` (a :class:`TokenCache` of this policy; a fresh one when None) and padding.

    For compiled passes (``train.compile``) shapes repeat: lengths are padded to a multiple of `bucket`, and with
    `next_rows` the next prompts to that many rows (copies of the first; only the real rows are read)."""
    cache = TokenCache(policy) if cache is None else cache
    encoded, pred_pos, tokens, turn_idx, is_last, stop_idx = [], [], [], [], [], []
    n = 0  # reply tokens so far
    for b, (turn, _) in enumerate(transitions):
        p_len = cache.prompt(turn.prompt, turn.image)["input_ids"].shape[1]
        enc = cache.turn(turn)
        encoded.append(enc)
        l = enc["input_ids"].shape[1] - p_len
        reply = enc["input_ids"][0, p_len:]
        pred_pos.append(torch.arange(p_len - 1, p_len + l - 1))
        tokens.append(reply)
        turn_idx.append(torch.full((l,), b))
        is_last.append(torch.arange(l) == l - 1)
        n += l
        stop_idx.append(n - 1)
    inputs = collate(policy, encoded, bucket)
    T = inputs["input_ids"].shape[1]
    pred = torch.cat(pred_pos) + torch.cat(turn_idx) * T

    dones = torch.tensor([float(t.done) for t, _ in transitions])
    nxt = [(b, n) for b, (t, n) in enumerate(transitions) if not t.done]
    for b, n in nxt:
        if n is None:
            raise ValueError(
                f"Turn {transitions[b][0].episode_id}:{transitions[b][0].t} is not terminal but has no next turn."
            )
    next_inputs, next_last = None, torch.zeros(0, dtype=torch.long)
    if nxt:
        next_enc = [cache.prompt(n.prompt, n.image) for _, n in nxt]
        lengths = torch.tensor([e["input_ids"].shape[1] for e in next_enc])
        next_inputs = collate(policy, next_enc + next_enc[:1] * max(0, (next_rows or 0) - len(next_enc)), bucket)
        next_last = torch.arange(len(nxt)) * next_inputs["input_ids"].shape[1] + lengths - 1
    dev = policy.device
    return TokenBatch(
        inputs=inputs,
        pred_pos=pred.to(dev),
        tokens=torch.cat(tokens).long().to(dev),
        turn_idx=torch.cat(turn_idx).to(dev),
        is_last=torch.cat(is_last).to(dev),
        stop_idx=torch.tensor(stop_idx, dtype=torch.long, device=dev),
        rewards=torch.tensor([float(t.reward) for t, _ in transitions], device=dev),
        dones=dones.to(dev),
        next_inputs=next_inputs,
        next_last_pos=next_last.to(dev),
        next_turn_idx=torch.tensor([b for b, _ in nxt], dtype=torch.long, device=dev),
    )
