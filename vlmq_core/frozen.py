"""The frozen bottom of the backbone, run once per turn (ours: docs/PAPER_MAP.md, "LoRA on the top layers").

With ``lora.layers: k`` the adapters sit on the top k of the decoder's n layers, and layers 0..L-1 (L = n - k) hold
no trainable parameter: their output for a token sequence never changes while a run trains. f_theta splits in two,

    x_L = f_frozen([p_t ; a_t ; stop])     # layers 0..L-1: no gradient, computed once per turn and kept
    h   = f_top(x_L)                       # layers L..n-1 with LoRA, then the final norm: every update

and an update runs k layers instead of n. :class:`FrozenCache` keeps ``x_L`` per turn, least recently used first out
beyond a memory budget (``train.layer_cache_gb``); the next prompt p_{t+1} of Eq. 2 is the start of the next turn's
sequence, so its states are a slice of that turn's.

Each turn is computed alone (a batch of one), so its cached states do not depend on which turns shared its
minibatch, and a resumed run rebuilds the same values. Text-only turns of a task share their first tokens (chat
header, task description) with the first turn the cache saw for that task, its *anchor* (kept in the trainer's
state): the anchor's frozen keys and values are computed once, and a new turn runs only the tokens after the prefix
it shares with the anchor, as the shared prompt prefix does within a minibatch (:mod:`vlmq_core.prefix`).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vlmq_core.config import ConfigError
from vlmq_core.prefix import MIN_SHARED_PREFIX, cache_key
from vlmq_core.turns import Transition, Turn

if TYPE_CHECKING:  # vlmq_core.model builds its LayerRanges from here
    from vlmq_core.model import Policy
    from vlmq_core.tokens import TokenBatch, TokenCache


def count_frozen_layers(model: nn.Module) -> int:
    """How many bottom layers of the text decoder hold no trainable parameter: L, where f_top starts. 0 when the
    decoder keeps no ``layers`` list, or when no layer trains (nothing to split)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return 0
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return 0


class LayerRange:
    """Runs a text decoder on a contiguous range of its layers, for the two halves of a split f_theta.

    Inside ``with LayerRange(decoder, start, stop).active():`` the decoder holds only layers ``start..stop-1`` (the
    same modules), their attention ``layer_idx`` renumbered from 0 (the key/value cache slots they write), and, when
    ``stop`` < n, its final norm is skipped, so ``last_hidden_state`` is layer ``stop - 1``'s output. The swapped-in
    objects are built once, so a compiled region sees the same modules on every call.
    """

    def __init__(self, decoder: nn.Module, start: int, stop: int):
        self.decoder, self.start, self.stop = decoder, start, stop
        self.full = decoder.layers
        self.part = nn.ModuleList(list(self.full)[start:stop])
        self.norm = decoder.norm if stop == len(self.full) else nn.Identity()
        self.indexed = [
            m for layer in self.part for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)
        ]
        self.original = [m.layer_idx for m in self.indexed]  # attention modules (and layers) that name a cache slot

    @contextmanager
    def active(self):
        decoder, norm = self.decoder, self.decoder.norm
        for m, idx in zip(self.indexed, self.original, strict=True):
            m.layer_idx = idx - self.start
        decoder.layers, decoder.norm = self.part, self.norm
        try:
            yield
        finally:
            decoder.layers, decoder.norm = self.full, norm
            for m, idx in zip(self.indexed, self.original, strict=True):
                m.layer_idx = idx


def check_splittable(model: nn.Module) -> None:
    """A ConfigError, with the fix, when the decoder cannot run as two halves (no final ``norm``, or attention types
    that differ between layers, whose cache slots would no longer match after renumbering)."""
    decoder = model.get_decoder()
    name = type(decoder).__name__
    if not isinstance(getattr(decoder, "norm", None), nn.Module):
        raise ConfigError(
            f"{name} has no final `norm` module, so its frozen layers cannot be cached; set train.layer_cache_gb=0."
        )
    types = getattr(decoder.config, "layer_types", None)
    if types and len(set(types)) > 1:
        raise ConfigError(
            f"{name} mixes attention types ({sorted(set(types))}), which the frozen-layer cache does not support; "
            "set train.layer_cache_gb=0 (the frozen layers then run without gradient on every update)."
        )


@dataclass
class Anchor:
    """A task's first turn: its ids, frozen states (T, d) and the frozen layers' keys and values."""

    ids: list[int]
    states: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pad_states(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Right-pad per-row states (T_i, d) with zeros to (B, length, d)."""
    return torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])


class FrozenCache:
    """The frozen layers' output ``x_L`` of each turn's ``[p_t ; a_t ; stop]``, computed once (module docstring).

    Entries live on the policy's device in its dtype; beyond `max_bytes` the least recently used are dropped (and
    computed again if sampled again); the anchors (one turn per task) come on top. :meth:`attach` gives a
    :class:`TokenBatch` the states its two passes start from (``lower``, ``next_lower``); ``Policy.hidden`` then runs
    only the top layers.
    """

    def __init__(self, policy: Policy, tokens: TokenCache, max_bytes: int):
        self.policy, self.tokens, self.max_bytes = policy, tokens, max_bytes
        self.frozen = policy.frozen_layers
        if not self.frozen:
            raise ConfigError("The frozen-layer cache needs lora.layers below the decoder's depth (no frozen layers).")
        check_splittable(policy.model)
        self.anchors: dict[str, Anchor] = {}
        self._entries: OrderedDict[tuple, tuple[int, torch.Tensor]] = OrderedDict()  # key -> (P, states (T - P, d))
        self.bytes = 0
        self.hits = self.misses = 0
        self._checked = False

    # ---- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The anchors' ids per task (the rest is recomputed: it is a cache)."""
        return {"anchors": {task: a.ids for task, a in self.anchors.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.anchors.clear()
        self._entries.clear()
        self.bytes = 0
        for task, ids in state.get("anchors", {}).items():
            self.anchors[task] = self._anchor(ids)

    # ---- the frozen pass ------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, inputs: dict[str, torch.Tensor], **kwargs):
        policy = self.policy
        was_training = policy.model.training
        policy.model.eval()
        try:
            with policy.bottom.active():
                return policy.backbone(**inputs, **kwargs)
        finally:
            policy.model.train(was_training)

    def _anchor(self, ids: list[int]) -> Anchor:
        dev = self.policy.device
        x = torch.tensor([ids], device=dev)
        out = self._run({"input_ids": x, "attention_mask": torch.ones_like(x)}, use_cache=True)
        cache = getattr(out, cache_key(self.policy.backbone))
        kv = [(layer.keys, layer.values) for layer in cache.layers[: self.frozen]]
        return Anchor(ids=list(ids), states=out.last_hidden_state[0], kv=kv)

    def _compute(self, turn: Turn) -> tuple[int, torch.Tensor]:
        """(P, states after P) of one turn: P tokens shared with its task's anchor (0 for turns with images)."""
        from transformers import DynamicCache

        enc = self.tokens.turn(turn)
        dev = self.policy.device
        if set(enc) - {"input_ids", "attention_mask"}:  # images: no prefix is shared across different pictures
            out = self._run({k: v.to(dev) for k, v in enc.items()}, use_cache=False)
            return 0, out.last_hidden_state[0]
        ids = self.tokens.turn_ids(turn)
        anchor = self.anchors.get(turn.task)
        if anchor is None:
            anchor = self.anchors[turn.task] = self._anchor(ids)
        P = min(_common_prefix(ids, anchor.ids), len(ids) - 1)
        if P < MIN_SHARED_PREFIX:
            x = torch.tensor([ids], device=dev)
            out = self._run({"input_ids": x, "attention_mask": torch.ones_like(x)}, use_cache=False)
            return 0, out.last_hidden_state[0]
        cache = DynamicCache()
        for i, (k, v) in enumerate(anchor.kv):
            cache.update(k[..., :P, :], v[..., :P, :], i)
        x = torch.tensor([ids[P:]], device=dev)
        positions = torch.arange(P, len(ids), device=dev)[None]
        mask = torch.ones(1, len(ids), dtype=torch.long, device=dev)
        key = cache_key(self.policy.backbone)
        inputs = {"input_ids": x, "attention_mask": mask}
        out = self._run(inputs, position_ids=positions, use_cache=True, **{key: cache})
        return P, out.last_hidden_state[0]

    def states(self, turn: Turn) -> torch.Tensor:
        """``x_L`` (T, d) of a turn's ``[p_t ; a_t ; stop]``, computed on a miss."""
        key = (turn.task, turn.prompt, turn.image, turn.reply)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            entry = self._entries[key] = self._compute(turn)
            self.bytes += _nbytes(entry[1])
            while self.bytes > self.max_bytes and len(self._entries) > 1:
                _, (_, old) = self._entries.popitem(last=False)
                self.bytes -= _nbytes(old)
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        P, rest = entry
        return torch.cat([self.anchors[turn.task].states[:P], rest]) if P else rest

    # ---- minibatches ----------------------------------------------------------------------------
    def attach(self, batch: TokenBatch, transitions: list[Transition]) -> TokenBatch:
        """Set ``batch.lower`` (B, T, d) and ``batch.next_lower`` (B', T', d): the frozen states of each turn and of
        each next prompt (the start of the next turn's states). Returns the batch."""
        T = batch.inputs["input_ids"].shape[1]
        batch.lower = pad_states([self.states(t) for t, _ in transitions], T)
        if batch.next_inputs is not None:
            nxt = [n for t, n in transitions if not t.done]
            lengths = [self.tokens.prompt(n.prompt, n.image)["input_ids"].shape[1] for n in nxt]
            rows = [self.states(n)[:length] for n, length in zip(nxt, lengths, strict=True)]
            rows += rows[:1] * (batch.next_inputs["input_ids"].shape[0] - len(rows))  # padding rows (build_batch)
            batch.next_lower = pad_states(rows, batch.next_inputs["input_ids"].shape[1])
        if not self._checked:
            self._check(batch)
        return batch

    @torch.no_grad()
    def _check(self, batch: TokenBatch) -> None:
        """Once: the split pass must give the full pass's hidden states (a model whose decoder does something the
        split does not, e.g. positions computed outside it, is refused with the fix)."""
        policy = self.policy
        was_training = policy.model.training
        policy.model.eval()
        try:
            row = {k: v[:1] for k, v in batch.inputs.items()}
            full = policy.hidden(row)
            split = policy.hidden(row, batch.lower[:1])
        finally:
            policy.model.train(was_training)
        mask = row["attention_mask"][0].bool()
        a, b = full[0][mask].float(), split[0][mask].float()
        err = ((a - b).norm() / a.norm().clamp(min=1e-6)).item()
        tol = 1e-4 if full.dtype == torch.float32 else 5e-2  # bfloat16: rounding differs between the two orders
        if not err <= tol:
            raise ConfigError(
                f"The frozen-layer cache does not reproduce {policy.name or 'this model'}'s hidden states (relative "
                f"difference {err:.2e}); set train.layer_cache_gb=0 (the frozen layers then run on every update)."
            )
        self._checked = True
