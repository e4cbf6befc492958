"""Shared-prompt-prefix forward passes: the same hidden states, without recomputing the common prefix per row.

Every prompt of an environment starts with the same chat-template header and task description; only the
observation and the reply differ (NumberLine: ~90 shared tokens out of ~110). A right-padded batch whose rows
share their first ``P`` tokens is run as

    h_pre, kv = f_theta(x[0, :P])                  # once, (1, P, d), with gradient
    h_suf     = f_theta(x[:, P:] | kv repeated B times, positions P..T-1)   # (B, T-P, d)
    h         = [h_pre repeated B times ; h_suf]   # (B, T, d), equal to f_theta(x) up to float rounding

Gradients reach the prefix through both ``h_pre`` and the cached keys/values, so a LoRA update is the same
as with the full pass. One difference in training mode: LoRA dropout draws one mask for the shared prefix
instead of one per row (the same expectation). Used only for text-only inputs of causal LMs; anything else
(images, VLM backbones whose positions depend on the image layout) takes the full pass.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

MIN_SHARED_PREFIX = 16
"""Below this many shared tokens the full pass is as cheap and simpler."""


def shared_prefix_len(inputs: dict[str, torch.Tensor]) -> int:
    """Number of leading tokens every row of a right-padded batch shares (all real tokens), at most T - 1.

    Returns 0 when there is nothing worth sharing: one row, inputs other than ids and mask, or a prefix
    shorter than :data:`MIN_SHARED_PREFIX`.
    """
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    if set(inputs) - {"input_ids", "attention_mask"} or ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(0)  # (T,)
    if mask is not None:
        same &= mask.bool().all(0)
    P = int(same.long().cumprod(0).sum())
    P = min(P, ids.shape[1] - 1)
    return P if P >= MIN_SHARED_PREFIX else 0


def hidden_with_shared_prefix(backbone: nn.Module, inputs: dict[str, torch.Tensor], P: int) -> torch.Tensor:
    """Last hidden states (B, T, d) of ``backbone`` on a right-padded batch whose rows share ``P`` tokens."""
    ids = inputs["input_ids"]
    B, T = ids.shape
    # transformers >= 5.x names the cache argument and output ``cache``; earlier 5.x ``past_key_values``
    key = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    pre = backbone(input_ids=ids[:1, :P], use_cache=True)
    cache = getattr(pre, key)
    cache.batch_repeat_interleave(B)
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    positions = torch.arange(P, T, device=ids.device)[None].expand(B, -1)
    suf = backbone(input_ids=ids[:, P:], attention_mask=mask, position_ids=positions, use_cache=True, **{key: cache})
    return torch.cat([pre.last_hidden_state.expand(B, -1, -1), suf.last_hidden_state], dim=1)
