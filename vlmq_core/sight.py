"""Teaching the embedded VLM to see: its vision tower and projector trained on vlmq's renders, the language model
frozen (LLaVA's first stage), in three steps.

1. **Captions into the embedding space** (ours, :func:`caption_loss`): image position i is trained to carry
   the input embedding of the caption's i-th token (the rest of the positions: a space's), so the frozen language
   model reads the picture as it would read its state summary. No language-model pass is needed, which makes this
   step about a hundred times cheaper per example than LLaVA's; it is where the tower learns to read.
2. **Answers through the frozen language model** (LLaVA's first-stage loss, :func:`answer_loss`): the image and a
   question (the transcription, or one field) in, the answer's tokens scored, gradients reaching only the tower
   and projector. It fixes what step 1's target leaves to chance: how the model uses the image in a chat turn.
3. **Captions again** (ours, step 1's loss on new renders at a lower learning rate): step 2 moves the image
   positions off the caption embeddings, and a short return puts them back (``docs/FINDINGS.md``, 32).

LLaVA's recipe is step 2 alone (``caption_steps=0, recaption_steps=0``); ``docs/PAPER_MAP.md`` says why we add
steps 1 and 3.
:func:`reading_accuracy` scores a model on held-out renders, field by field.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlmq_core import reading as rd
from vlmq_core.config import ConfigError, check_fields, require
from vlmq_core.progress import bar as progress_bar
from vlmq_core.vision import (
    TowerConfig,
    image_embeddings,
    load_vision_state,
    train_only_vision,
    vision_modules,
    vision_state_dict,
)

ALIGNMENTS = ("fixed", "monotonic")
"""Step 1's ways of placing a caption among the image positions (:attr:`SightConfig.alignment`)."""


@dataclass
class SightConfig:
    """How the vision is trained (all three steps) and scored."""

    tasks: list[str] = field(default_factory=lambda: list(rd.TASKS))
    """Tasks whose renders it learns from (interleaved, one of each per round)."""
    tower: TowerConfig = field(default_factory=TowerConfig)
    """The tower's shape."""
    caption_steps: int = 3000
    """Updates of step 1 (captions into the embedding space); 0 skips it (LLaVA's recipe)."""
    caption_batch: int = 36
    """Renders per step-1 update."""
    caption_lr: float = 1e-3
    """Peak learning rate of step 1 (one-cycle: 5% warm-up, cosine decay)."""
    answer_steps: int = 200
    """Updates of step 2 (answers through the frozen language model)."""
    answer_batch: int = 9
    """Question/answer pairs per step-2 update."""
    answer_lr: float = 2e-4
    """Peak learning rate of step 2."""
    recaption_steps: int = 600
    """Updates of step 3 (ours): step 1's loss again, on renders step 1 never drew, after step 2, which moves the
    image positions off the caption embeddings (caption tokens carried on 8 held-out renders a task 97% after step
    1, 36% after step 2, 95.5% after 600 updates of step 3, ``docs/FINDINGS.md``, 32; the shipped build runs 3000,
    with ``recaption_more``, 34). 0: end with step 2 (LLaVA's order; the shipped weights before 2026-12-06)."""
    recaption_lr: float = 3e-4
    """Peak learning rate of step 3 (batch: ``caption_batch``)."""
    recaption_more: list[str] = field(default_factory=lambda: ["Points24"] * 3)
    """Tasks step 3 draws more renders of (ours): each name adds one turn of its task to each round of ``tasks``
    (Points24 three times: a third of step 3's renders, for the field the eyes misread most, its formula: 86% ->
    93%, ``docs/FINDINGS.md``, 33-34); names outside ``tasks`` are left out; []: every task alike (the shipped weights
    before 2026-12-06)."""
    seed: int = 0
    """Initialisation of the tower and projector (the renders' seeds follow from the step)."""
    alignment: str = "monotonic"
    """Where step 1 puts the caption's tokens among the image positions: ``monotonic`` (ours, the shipped
    weights'), each token at one position of the tower's choosing, in the caption's order, spaces between
    (:func:`monotonic_caption_loss`), so a token can sit near what shows it; ``fixed``, token i at position i (the
    first positions carry the caption, the rest a space; :func:`caption_loss`), which must route every card's index
    to the image's first row. After 3000 updates on 8 held-out renders per task, monotonic read every field of
    8/8 EZPoints and GoToObj renders where fixed read 1/8 and 2/8 (``docs/FINDINGS.md``, 30)."""
    bf16: bool = False
    """Run each update under bfloat16 autocast (weights and optimiser stay float32): on a CPU with AVX512-BF16 or
    AMX a step-1 update takes about two thirds of the time (0.57 s against 0.88 s on a 2-core EPYC); elsewhere it
    can be slower."""
    check_every: int = 500
    """Every this many step-1 updates (and at the last update of each step: step 2 moves the eyes too), a held-out
    check (:func:`seen_check`) is logged and printed: the share of caption tokens the image positions carry and of
    renders read right, per task and field; 0: never."""
    check_renders: int = 8
    """Held-out renders per task in each check (seeds from :data:`reading.HELD_OUT_SEED`)."""

    def __post_init__(self) -> None:
        if isinstance(self.tower, dict):
            self.tower = TowerConfig(**self.tower)
        check_fields(self, "sight.")
        for key in ("tasks", "recaption_more"):
            unknown = [t for t in getattr(self, key) if t not in rd.TASKS]
            if unknown:
                readable = ", ".join(rd.TASKS)
                raise ConfigError(f"sight.{key}: no renders to read for {unknown}; readable tasks: {readable}.")
        at_least_1, at_least_0, positive = (
            (lambda v: v >= 1, ">= 1"),
            (lambda v: v >= 0, ">= 0"),
            (lambda v: v > 0, "> 0"),
        )
        if self.alignment not in ALIGNMENTS:
            raise ConfigError(f"sight.alignment must be one of {', '.join(ALIGNMENTS)}, not {self.alignment!r}.")
        require(
            self,
            "sight.",
            {"caption_steps": at_least_0, "caption_batch": at_least_1, "caption_lr": positive,
             "answer_steps": at_least_0, "answer_batch": at_least_1, "answer_lr": positive,
             "recaption_steps": at_least_0, "recaption_lr": positive,
             "check_every": at_least_0, "check_renders": at_least_1},
        )  # fmt: skip


STEP_SETTINGS = {
    2: ("answer_steps", "answer_batch", "answer_lr"),
    3: ("recaption_steps", "recaption_lr", "recaption_more"),
}
"""The settings only step 2 or step 3 reads: a saved run that has not begun that step continues with new ones (a
finished two-step build gains step 3)."""

BEFORE_ADDED = {"alignment": "fixed", "recaption_steps": 0, "recaption_more": []}
"""What a run saved before a setting existed did (``alignment``: fixed, the default until monotonic replaced it;
``recaption_steps``: 0, no step 3; ``recaption_more``: none, every task alike)."""


# ---- step 1: captions into the embedding space -----------------------------------------------------------------


def pad_id(tokenizer) -> int:
    """The token that fills the image positions after a caption: a space."""
    return tokenizer(" ", add_special_tokens=False).input_ids[0]


def caption_targets(tokenizer, captions: Sequence[str], positions: int) -> torch.Tensor:
    """(B, positions) token ids: each caption's tokens, cut at `positions`, then :func:`pad_id`."""
    pad = pad_id(tokenizer)
    rows = []
    for text in captions:
        ids = tokenizer(text, add_special_tokens=False).input_ids[:positions]
        rows.append(ids + [pad] * (positions - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def caption_loss(
    e: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, pad_id: int, scale: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Step 1's loss (ours): e (B, N, d) the projector's outputs, ids (B, N) the target tokens (`pad_id` after each
    caption), table (V, d) the frozen input embeddings. Per position, the cross-entropy of the dot products with the
    rows of the tokens present in the batch (discrimination) plus the squared distance to the target row over the
    table's mean square (scale): ``CE(e E_c^T, ids) + |e - E[ids]|^2 / mean(E^2)``. Caption positions and padding
    each weigh half (a caption is a tenth of the positions, and all that matters). `scale`: mean(E^2), computed
    when not given (a constant of the frozen table: callers pass it once). ``token_acc``: the share of
    caption positions whose nearest row, among the batch's tokens, is the target's."""
    cand, local = torch.unique(ids, return_inverse=True)
    logits = e.float() @ table[cand].float().T
    ce = F.cross_entropy(logits.reshape(-1, len(cand)), local.reshape(-1), reduction="none").view(ids.shape)
    scale = table.float().pow(2).mean().item() if scale is None else scale
    mse = (e.float() - table[ids].float()).pow(2).mean(-1) / scale
    real = ids != pad_id
    w = torch.where(real, 1.0 / real.sum().clamp(min=1), 1.0 / (~real).sum().clamp(min=1))
    w = w / w.sum()
    ce, mse = (w * ce).sum(), (w * mse).sum()
    with torch.no_grad():
        hit = cand[nearest_tokens(e, table[cand])] == ids  # nearest among the batch's tokens (cheap)
        acc = hit[real].float().mean().item() if real.any() else 1.0
    return ce + mse, {"ce": ce.item(), "mse": mse.item(), "token_acc": acc}


NO_PATH = -1e4
"""Log-probability standing for an impossible alignment (finite: logaddexp of two -inf has no gradient)."""


def monotonic_caption_loss(
    e: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, spaced: torch.Tensor, table: torch.Tensor,
    pad_id: int, scale: float, tau: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Step 1's loss with ``alignment: monotonic`` (ours): every caption token is carried by exactly one image
    position, in the caption's order, the positions between by a space (`pad_id`); which positions is left to the
    tower, and the loss sums over all such alignments (a CTC whose blank is the space and whose repeats are not
    merged, since the language model reads every position). Spaces may only widen a gap the caption has: `spaced`
    (B, L + 1) says where (before token j, :func:`caption_labels`), so "19" stays two neighbouring positions and is
    never read "1 9". e (B, N, d) the projector's outputs, labels (B, L) the captions' token ids (anything past
    `lengths` (B,) is ignored, each length <= N), table (V, d) the frozen input embeddings, scale their mean
    square. Per position a distribution over the batch's tokens and the space, with
    logits ``-|e - E_c|^2 / (d scale tau)``, so the likeliest row is also the nearest (what the language model reads
    is pulled onto it). Every reading has one alignment (a caption's own space token takes the first space of its
    gap), so the likelihood is a probability. Loss: the alignment-summed negative log-likelihood per caption token.
    ``token_acc``: the share of caption tokens that the positions' nearest rows (among the batch's, spaces dropped)
    give in order."""
    B, N, d = e.shape
    L = labels.shape[1]
    cand, local = torch.unique(torch.cat([labels.reshape(-1), labels.new_tensor([pad_id])]), return_inverse=True)
    lab, blank = local[:-1].view(B, L), int(local[-1])
    rows = table[cand].float()
    ef = e.float()
    dist = (ef.pow(2).sum(-1, keepdim=True) - 2 * ef @ rows.T + rows.pow(2).sum(-1)) / (d * scale)
    lp = F.log_softmax(-dist / tau, dim=-1)  # (B, N, C)
    lp_blank = lp[..., blank]  # (B, N)
    lp_lab = torch.gather(lp, 2, lab.unsqueeze(1).expand(B, N, L))  # (B, N, L)
    alpha = torch.full((B, L + 1), NO_PATH, device=e.device)
    alpha[:, 0] = 0.0  # alpha[:, j]: log-probability that the positions so far carry the first j tokens
    none = alpha.new_full((B, 1), NO_PATH)
    # A space where the caption has none is impossible; so is one standing for nothing before a caption token that
    # is itself a space (" 9" is " " then "9"): that position must carry the token, or two alignments would
    # count the same reading and the likelihood could pass 1.
    own_space = (labels == pad_id) & (torch.arange(L, device=e.device) < lengths.view(B, 1))
    open_ = spaced & ~torch.cat([own_space, own_space.new_zeros(B, 1)], 1)
    closed = torch.where(open_, 0.0, NO_PATH).to(alpha)
    for t in range(N):
        stay = alpha + lp_blank[:, t : t + 1] + closed
        alpha = torch.logaddexp(stay, torch.cat([none, alpha[:, :-1] + lp_lab[:, t]], 1))
    ll = alpha.gather(1, lengths.view(B, 1)).squeeze(1)
    loss = -(ll / lengths.clamp(min=1)).mean()
    with torch.no_grad():
        got = cand[lp.argmax(-1)]
        acc = _in_order(got, labels, lengths, pad_id)
    return loss, {"nll": loss.item(), "token_acc": acc}


def _in_order(got: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, pad_id: int) -> float:
    """The share of the captions' non-space tokens that `got` (B, N) gives at the same rank once spaces are dropped."""
    hit = total = 0
    for row, want, n in zip(got.tolist(), labels.tolist(), lengths.tolist(), strict=True):
        said = [t for t in row if t != pad_id]
        want = [t for t in want[:n] if t != pad_id]
        hit += sum(a == b for a, b in zip(said, want, strict=False))
        total += len(want)
    return hit / max(1, total)


def caption_labels(
    tokenizer, captions: Sequence[str], positions: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For :func:`monotonic_caption_loss`: (B, L) token ids of each caption cut at `positions` (space-padded to the
    longest), (B,) their lengths, and (B, L + 1) where a space may go: before token j when the caption has
    whitespace there (token j starts with it or token j-1 ends with it), before the first token and after the
    last."""
    rows = [tokenizer(text, add_special_tokens=False).input_ids[:positions] for text in captions]
    longest = max(len(r) for r in rows)
    pad = pad_id(tokenizer)
    spaced = torch.zeros(len(rows), longest + 1, dtype=torch.bool)
    for b, r in enumerate(rows):
        edges = [_whitespace_edges(tokenizer, t) for t in r]
        spaced[b, 0] = True
        spaced[b, len(r) :] = True
        for j in range(1, len(r)):
            spaced[b, j] = edges[j][0] or edges[j - 1][1]
    return (
        torch.tensor([r + [pad] * (longest - len(r)) for r in rows], dtype=torch.long),
        torch.tensor([len(r) for r in rows], dtype=torch.long),
        spaced,
    )


@functools.cache
def _whitespace_edges(tokenizer, token: int) -> tuple[bool, bool]:
    """Whether `token` decodes to text that starts, and that ends, with whitespace (decoded once per token: the
    captions of every update reuse a few hundred)."""
    piece = tokenizer.decode([token])
    return piece[:1].isspace(), piece[-1:].isspace()


def nearest_tokens(e: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, N) ids of the rows of `table` (V, d) nearest to each e (B, N, d) in Euclidean distance."""
    t = table.float()
    return (t.pow(2).sum(1) - 2 * e.float() @ t.T).argmin(-1)


# ---- step 2: answers through the frozen language model ---------------------------------------------------------


def answer_inputs(processor, items: Sequence[tuple[object, str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for ``(image, question, answer)`` items, with ``labels`` = the answer's tokens and
    the turn's end marker (every other position -100)."""
    tok = processor.tokenizer
    texts, starts = [], []
    for _, question, answer in items:
        user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        texts.append(prompt + answer + "<|im_end|>")
        starts.append(prompt)
    side, tok.padding_side = tok.padding_side, "right"
    try:
        inputs = processor(text=texts, images=[im for im, _, _ in items], return_tensors="pt", padding=True)
        prompt_ids = processor(text=starts, images=[im for im, _, _ in items], return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    for row, n in enumerate(prompt_ids["attention_mask"].sum(1).tolist()):
        labels[row, :n] = -100
    inputs["labels"] = labels
    return inputs


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Step 2's loss (LLaVA's first stage): mean next-token cross-entropy over the answer tokens.
    logits (B, T, V), labels (B, T) with -100 where nothing is scored."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


# ---- training ----------------------------------------------------------------------------------------------------


def one_cycle(opt: torch.optim.Optimizer, steps: int, lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """`opt`'s learning rate over `steps` updates: linear warm-up to `lr` over the first 5%, then a cosine to 0."""
    warm = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    for g in opt.param_groups:
        g["lr"] = lr
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _round(cfg: SightConfig, stage: int, step: int, size: int) -> list[rd.Reading]:
    """The renders of update `step` of `stage`: seeds follow from (stage, step), so a resumed run sees the same."""
    base = rd.TRAIN_SEED + stage * 100_000_000 + step * size
    tasks = cfg.tasks + [t for t in cfg.recaption_more if t in cfg.tasks] if stage == 3 else cfg.tasks
    return [rd.reading(tasks[(base + i) % len(tasks)], base + i) for i in range(size)]


def _pixels(processor, images) -> torch.Tensor:
    return processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]


def train_caption_step(
    vlm: nn.Module, processor, cfg: SightConfig, step: int, opt, scale: float | None = None, stage: int = 1
) -> dict[str, float]:
    """One update of step 1 (or, `stage` 3, of step 3: its own renders) on the renders of `step` (`scale`:
    :func:`caption_loss`'s, or computed here). The row's ``data_seconds``: the part spent rendering and
    preprocessing."""
    t0 = time.perf_counter()
    batch = _round(cfg, stage, step, cfg.caption_batch)
    mods = vision_modules(vlm)
    x = _pixels(processor, [r.image for r in batch]).to(next(mods["vision_tower"].parameters()).dtype)
    captions = [r.caption for r in batch]
    if cfg.alignment == "fixed":
        ids = caption_targets(processor.tokenizer, captions, cfg.tower.image_tokens)
    else:
        labels, lengths, spaced = caption_labels(processor.tokenizer, captions, cfg.tower.image_tokens)
    data_seconds = time.perf_counter() - t0
    e = image_embeddings(vlm, x)
    table = vlm.get_input_embeddings().weight.detach()
    if scale is None:
        scale = table.float().pow(2).mean().item()
    if cfg.alignment == "fixed":
        loss, parts = caption_loss(e, ids, table, pad_id(processor.tokenizer), scale)
    else:
        loss, parts = monotonic_caption_loss(e, labels, lengths, spaced, table, pad_id(processor.tokenizer), scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for m in mods.values() for p in m.parameters()], 1.0)
    opt.step()
    return {"loss": loss.item(), **parts, "data_seconds": data_seconds}


def train_answer_step(vlm: nn.Module, processor, cfg: SightConfig, step: int, opt) -> dict[str, float]:
    """One step-2 update: each render of `step` with one of its questions (chosen by the seed)."""
    batch = _round(cfg, 2, step, cfg.answer_batch)
    items = []
    for r in batch:
        q, a = r.questions[r.seed % len(r.questions)]
        items.append((r.image, q, a))
    inputs = answer_inputs(processor, items)
    labels = inputs.pop("labels")
    dtype = next(vision_modules(vlm)["vision_tower"].parameters()).dtype
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    loss = answer_loss(vlm(**inputs).logits, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for m in vision_modules(vlm).values() for p in m.parameters()], 1.0)
    opt.step()
    return {"loss": loss.item()}


def train_sight(
    vlm: nn.Module, processor, cfg: SightConfig, folder: str | Path, every: int = 100, progress: bool = True
) -> list[dict[str, float]]:
    """Run the three steps on `vlm` (its language model frozen), saving ``sight.pt`` (the vision weights, optimiser,
    stage, step and `cfg`) atomically into `folder` every `every` updates; a killed or finished run continues from
    there (with the same `cfg`, but for the settings of a step it has not begun, :data:`STEP_SETTINGS`; other
    settings are refused). Returns the logged rows (``stage``, ``step``, losses, seconds; and
    every ``cfg.check_every`` updates of steps 1 and 3 and at the end of each step a ``stage: "check"`` row of
    :func:`seen_check`, printed too, whose ``step`` counts the updates of all steps so far)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = train_only_vision(vlm)
    ckpt = folder / "sight.pt"
    state = torch.load(ckpt, weights_only=True) if ckpt.is_file() else None
    settings = asdict(cfg)
    if state is not None:  # a setting added since the run began counts as what the run did without it
        state["config"] = {**asdict(SightConfig()), **BEFORE_ADDED, **state["config"]}
    if state is not None and state["config"] != settings:
        changed = sorted(k for k in settings if state["config"].get(k) != settings[k])
        at = (state["stage"], state["step"])
        not_begun = {k for stage, keys in STEP_SETTINGS.items() if at <= (stage, 0) for k in keys}
        if not set(changed) <= not_begun:  # (a run may be extended with, or change, steps it has not begun)
            raise ValueError(
                f"{folder} holds a run of other settings ({', '.join(changed)} differ): continue it with its own "
                "settings (only those of a step it has not begun may change), or give another folder."
            )
        state["config"] = settings
    if state is not None:
        load_vision_state(vlm, state["vision"])
    log: list[dict[str, float]] = state["log"] if state else []
    scale = vlm.get_input_embeddings().weight.detach().float().pow(2).mean().item()
    device = params[0].device.type
    stages = [
        (1, cfg.caption_steps, cfg.caption_lr, functools.partial(train_caption_step, scale=scale)),
        (2, cfg.answer_steps, cfg.answer_lr, train_answer_step),
        (3, cfg.recaption_steps, cfg.recaption_lr, functools.partial(train_caption_step, scale=scale, stage=3)),
    ]
    before = {1: 0, 2: cfg.caption_steps, 3: cfg.caption_steps + cfg.answer_steps}  # updates of the earlier steps
    for stage, steps, lr, fn in stages:
        start = 0
        if state is not None and state["stage"] > stage:
            continue
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        sched = one_cycle(opt, steps, lr)
        if state is not None and state["stage"] == stage and state["step"] > 0:  # (step 0: the stage not begun)
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            start = state["step"]
        vlm.train()
        desc = {1: "sight: captions", 2: "sight: answers", 3: "sight: captions again"}[stage]
        with progress_bar(total=steps, initial=start, desc=desc, disable=not progress) as pbar:
            for step in range(start, steps):
                t0 = time.perf_counter()
                with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.bf16):
                    row = fn(vlm, processor, cfg, step, opt)
                sched.step()
                log.append({"stage": stage, "step": step + 1, **row, "seconds": time.perf_counter() - t0})
                pbar.update(1)
                pbar.set_postfix_str(f"loss {row['loss']:.3f}", refresh=False)
                # every check_every caption updates and at each step's last (step 2 moves the eyes too)
                due = step + 1 == steps or (stage != 2 and (step + 1) % max(cfg.check_every, 1) == 0)
                if cfg.check_every and due:
                    done = before[stage] + step + 1  # updates of all steps so far
                    vlm.eval()
                    check = seen_check(vlm, processor, cfg.tasks, cfg.check_renders, alignment=cfg.alignment)
                    vlm.train()
                    log.append({"stage": "check", "step": done, **check})
                    if progress:
                        pbar.write(f"held-out check after {done} updates: {describe_check(check)}")
                if (step + 1) % every == 0 or step + 1 == steps:
                    nxt = (stage, step + 1) if step + 1 < steps else (stage + 1, 0)
                    tmp = folder / ".sight.pt.tmp"
                    torch.save(
                        {
                            "vision": vision_state_dict(vlm),
                            "opt": opt.state_dict(),
                            "sched": sched.state_dict(),
                            "stage": nxt[0],
                            "step": nxt[1],
                            "log": log,
                            "config": settings,
                        },
                        tmp,
                    )
                    tmp.replace(ckpt)
        state = None
    vlm.eval()
    return log


def compact_log(log: Sequence[dict], every: int = 20) -> list[dict]:
    """:func:`train_sight`'s log small enough to ship with the weights (12 000 step-1 updates: 600 rows): each
    stage's update rows averaged over blocks of `every` (``step``: the block's last; ``updates``: how many), the
    ``check`` rows whole."""
    out, block = [], []

    def flush() -> None:
        if block:
            keys = [k for k in block[0] if k not in ("stage", "step") and all(k in r for r in block)]
            mean = {k: sum(r[k] for r in block) / len(block) for k in keys}
            out.append({"stage": block[0]["stage"], "step": block[-1]["step"], **mean, "updates": len(block)})
            block.clear()

    for row in log:
        if row["stage"] == "check" or (block and row["stage"] != block[0]["stage"]):
            flush()
        if row["stage"] == "check":
            out.append(dict(row))
            continue
        block.append(row)
        if len(block) == every:
            flush()
    flush()
    return out


# ---- scoring --------------------------------------------------------------------------------------------------


@torch.no_grad()
def answer(
    vlm: nn.Module, processor, items: Sequence[tuple[object, str]], max_new_tokens: int = 48, batch: int = 8
) -> list[str]:
    """Greedy answers of `vlm` to ``(image, question)`` items (image None: the question alone)."""
    tok = processor.tokenizer
    dtype = next(vision_modules(vlm)["vision_tower"].parameters()).dtype
    out = []
    side, tok.padding_side = tok.padding_side, "left"
    try:
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            images = [im for im, _ in chunk if im is not None]
            if images and len(images) != len(chunk):
                raise ValueError("answer() takes a batch of items all with an image or all without")
            texts = [
                processor.apply_chat_template(
                    [
                        {
                            "role": "user",
                            "content": [{"type": "image"}] * (im is not None) + [{"type": "text", "text": q}],
                        }
                    ],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                for im, q in chunk
            ]
            inputs = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
            if images:
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            ids = vlm.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tok.pad_token_id,
            )
            out += [
                t.strip() for t in tok.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            ]
    finally:
        tok.padding_side = side
    return out


@torch.no_grad()
def seen_ids(vlm: nn.Module, processor, images: Sequence[object], batch: int = 16) -> torch.Tensor:
    """(len(images), image tokens) ids: each image position's nearest input embedding in the whole vocabulary."""
    table = vlm.get_input_embeddings().weight.detach()
    dtype = next(vision_modules(vlm)["vision_tower"].parameters()).dtype
    out = []
    for i in range(0, len(images), batch):
        out.append(nearest_tokens(image_embeddings(vlm, _pixels(processor, images[i : i + batch]).to(dtype)), table))
    return torch.cat(out)


def seen_text(
    vlm: nn.Module, processor, images: Sequence[object], batch: int = 16, alignment: str = "fixed"
) -> list[str]:
    """The text the image positions carry (:func:`seen_ids` decoded, trailing padding dropped). What step 1
    trains; the language model plays no part."""
    return [_spaced(t, alignment) for t in processor.tokenizer.batch_decode(seen_ids(vlm, processor, images, batch))]


def _spaced(text: str, alignment: str) -> str:
    """Decoded image positions as the caption they stand for: trailing spaces dropped; with ``monotonic``
    alignment the spaces it puts in gaps are collapsed too (one space, none at a line's ends)."""
    if alignment == "monotonic":
        text = "\n".join(re.sub(" {2,}", " ", line).strip(" ") for line in text.split("\n"))
    return text.rstrip()


def seen_check(
    vlm: nn.Module,
    processor,
    tasks: Sequence[str],
    per_task: int,
    start: int = rd.HELD_OUT_SEED,
    alignment: str = "fixed",
) -> dict[str, float]:
    """Step 1's progress on `per_task` held-out renders per task (seeds from `start`), without the language model:
    ``tokens``, the share of caption tokens (within the image's positions; spaces aside) that the image positions
    carry exactly (``fixed``: at their own position; ``monotonic``: at their rank once spaces are dropped);
    ``<task>``, the share of renders whose every field parses right from :func:`seen_text`; and
    ``<task>/<field>``, the share per field."""
    rs = _held_out(tuple(tasks), per_task, start)
    ids = seen_ids(vlm, processor, [r.image for r in rs])
    pad = pad_id(processor.tokenizer)
    if alignment == "fixed":
        target = caption_targets(processor.tokenizer, [r.caption for r in rs], ids.shape[1])
        out = {"tokens": (ids == target)[target != pad].float().mean().item()}
    else:
        labels, lengths, _ = caption_labels(processor.tokenizer, [r.caption for r in rs], ids.shape[1])
        out = {"tokens": _in_order(ids, labels, lengths, pad)}
    texts = [_spaced(t, alignment) for t in processor.tokenizer.batch_decode(ids)]
    for task in tasks:
        got = [(r, rd.fields(task, t)) for r, t in zip(rs, texts, strict=True) if r.task == task]
        out[task] = sum(g == r.fields for r, g in got) / len(got)
        for key in dict.fromkeys(k for r, _ in got for k in r.fields):  # (a field a render lacks: read right if absent)
            out[f"{task}/{key}"] = sum(g.get(key) == r.fields.get(key) for r, g in got) / len(got)
    return out


@functools.cache
def _held_out(tasks: tuple[str, ...], per_task: int, start: int) -> list[rd.Reading]:
    return [rd.reading(t, start + i) for t in tasks for i in range(per_task)]


def describe_check(check: dict[str, float]) -> str:
    """One line of a :func:`seen_check`: the token share, then each task's renders read right."""
    shown = [(k, v) for k, v in check.items() if "/" not in k and k != "tokens"]
    tasks = ", ".join(f"{k.removeprefix('BabyAI-')} {v:.0%}" for k, v in shown)
    return f"caption tokens carried {check['tokens']:.1%}; renders read right: {tasks}"


def reading_accuracy(
    vlm: nn.Module,
    processor,
    tasks: Sequence[str],
    per_task: int,
    start: int = rd.HELD_OUT_SEED,
    from_text: bool = False,
    alignment: str = "fixed",
) -> dict[str, dict[str, dict[str, float]]]:
    """Exact-match accuracy per task and field on `per_task` held-out renders (seeds from `start`), three ways:
    ``seen`` parses the fields of the text the image positions carry (each position's nearest token in the whole
    vocabulary: the eyes alone, no language-model pass), ``read`` those of the model's transcription
    (:data:`reading.TRANSCRIBE`), ``asked`` asks one question per field. Each entry: ``{"acc": fraction, "se":
    standard error, "n": count, "majority": the rate of always giving the commonest true value}``. With
    `from_text` the model gets each caption as text instead of the image (``Image: <caption>`` before the
    question): how well its language model reads the words alone. `alignment`: the tower's step-1 alignment
    (:attr:`SightConfig.alignment`), which says how ``seen`` turns positions into text."""

    def shown(r: rd.Reading, question: str) -> tuple[object, str]:
        return (None, f"Image: {r.caption}\n{question}") if from_text else (r.image, question)

    out: dict[str, dict[str, dict[str, float]]] = {}
    for task in tasks:
        rs = [rd.reading(task, start + i) for i in range(per_task)]
        longest = max(len(processor.tokenizer(r.caption).input_ids) for r in rs)
        said = answer(vlm, processor, [shown(r, rd.TRANSCRIBE) for r in rs], max_new_tokens=longest + 8)
        hits: dict[str, list[bool]] = {}
        ways = (
            [("read", said)]
            if from_text
            else [("seen", seen_text(vlm, processor, [r.image for r in rs], alignment=alignment)), ("read", said)]
        )
        for way, texts in ways:
            for r, text in zip(rs, texts, strict=True):
                got = rd.fields(task, text)
                for k, v in r.fields.items():
                    hits.setdefault(f"{way}/{k}", []).append(got.get(k) == v)
        asked = [(r, q, a) for r in rs for q, a in r.questions[1:]]
        replies = answer(vlm, processor, [shown(r, q) for r, q, _ in asked], max_new_tokens=24)
        for (r, q, a), reply in zip(asked, replies, strict=True):
            key = next(k for k, v in r.fields.items() if (rd.QUESTIONS.get(k), v) == (q, a))
            hits.setdefault(f"asked/{key}", []).append(reply == a)
        out[task] = {k: _rate(v, [r.fields.get(k.split("/")[1]) for r in rs]) for k, v in hits.items()}
    return out


def _rate(hits: list[bool], truth: list[str | None]) -> dict[str, float]:
    """Accuracy, its standard error and the majority rate (always giving the commonest true value)."""
    n = len(hits)
    p = sum(hits) / n
    values = [t for t in truth if t is not None]
    majority = max(values.count(v) for v in set(values)) / len(values) if values else 0.0
    return {"acc": p, "se": math.sqrt(p * (1 - p) / n), "n": n, "majority": majority}
