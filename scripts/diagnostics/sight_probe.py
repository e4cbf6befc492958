"""How fast the embedded VLM's tower learns to read (step 1 of vlmq_core.sight), without the notebook around it.

Trains step 1 on the real embedded language model's embeddings and, every --every updates, prints the share of
held-out caption tokens the image positions carry exactly (nearest row of the whole embedding table) and, per
task, the share of renders whose every field reads right from that text (``seen`` in notebook 00).

    python scripts/diagnostics/sight_probe.py --steps 3000 --every 250 --threads 2
    python scripts/diagnostics/sight_probe.py --steps 600 --lr 2e-3 --tasks NumberLine Blackjack
    python scripts/diagnostics/sight_probe.py --steps 20 --every 10 --bf16     # seconds per update under autocast
    python scripts/diagnostics/sight_probe.py --answer-updates 5 [--bf16]     # step 2's seconds per update, and exit
"""

from __future__ import annotations

import argparse
import time

import torch

from vlmq_core import reading as rd
from vlmq_core.model import ModelConfig, load_backbone
from vlmq_core.sight import (
    SightConfig,
    caption_targets,
    one_cycle,
    pad_id,
    seen_text,
    train_answer_step,
    train_caption_step,
)
from vlmq_core.vision import TowerConfig, assemble, image_embeddings, vision_modules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=36)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--held-out", type=int, default=8, help="held-out renders per task at each check")
    ap.add_argument("--tasks", nargs="*", default=list(rd.TASKS))
    ap.add_argument("--layers", type=int, default=TowerConfig.layers)
    ap.add_argument("--hidden", type=int, default=TowerConfig.hidden_size)
    ap.add_argument("--bf16", action="store_true", help="run each update under bfloat16 autocast (AVX512-BF16, AMX)")
    ap.add_argument("--answer-updates", type=int, default=0, help="only time this many step-2 updates, then exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm, tok, _ = load_backbone(ModelConfig(name="embedded", dtype="float32", device="cpu"))
    tower = TowerConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden, layers=args.layers)
    vlm, proc = assemble(lm, tok, tower)
    cfg = SightConfig(tasks=args.tasks, tower=tower, caption_steps=args.steps, caption_batch=args.batch)
    params = [p for m in vision_modules(vlm).values() for p in m.parameters()]
    for p in vlm.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    if args.answer_updates:
        vlm.train()
        for step in range(args.answer_updates):
            t0 = time.time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                row = train_answer_step(vlm, proc, cfg, step, opt)
            print(f"step-2 update {step + 1}: {time.time() - t0:.2f} s, loss {row['loss']:.3f}", flush=True)
        return
    sched = one_cycle(opt, args.steps, args.lr)
    held = [rd.reading(t, rd.HELD_OUT_SEED + i) for i in range(args.held_out) for t in cfg.tasks]
    ids = caption_targets(tok, [r.caption for r in held], tower.image_tokens)
    real = ids != pad_id(tok)
    start = time.time()
    vlm.train()
    scale = vlm.get_input_embeddings().weight.float().pow(2).mean().item()
    for step in range(args.steps):
        t0 = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            row = train_caption_step(vlm, proc, cfg, step, opt, scale)
        sched.step()
        seconds = time.time() - t0
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            vlm.eval()
            texts = seen_text(vlm, proc, [r.image for r in held])
            with torch.no_grad():
                e = image_embeddings(
                    vlm, proc.image_processor(images=[r.image for r in held], return_tensors="pt")["pixel_values"]
                )
                table = vlm.get_input_embeddings().weight
                got = (table.pow(2).sum(1) - 2 * e @ table.T).argmin(-1)
            vlm.train()
            per_task = {
                t: sum(rd.fields(r.task, s) == r.fields for r, s in zip(held, texts, strict=True) if r.task == t)
                / args.held_out
                for t in cfg.tasks
            }
            token = (got == ids)[real].float().mean().item()
            minutes = (time.time() - start) / 60
            print(
                f"step {step + 1} ({minutes:.1f} min; last update {seconds:.2f} s, "
                f"{row['data_seconds']:.2f} s of it rendering) loss {row['loss']:.3f} held-out tokens {token:.1%}",
                flush=True,
            )
            print("  renders read right:", {t.removeprefix("BabyAI-"): f"{v:.0%}" for t, v in per_task.items()})
            print("  e.g.", repr(texts[0][:80]), "for", repr(held[0].caption[:80]), flush=True)


if __name__ == "__main__":
    main()
