"""Can the embedded VLM's tower learn a field it misreads if step 1's loss sees more of that task's renders?
(docs/FINDINGS.md, 33: Points24's formula.)

From a folder of vision weights (--weights; default the shipped ones), it runs --updates of step 1's loss on renders
of --tasks only, in turn (a task named twice gets twice the renders) (peak --lr, one-cycle, bfloat16 autocast, batch
``caption_batch``; seeds no build step draws), and checks ``sight.seen_check`` on --renders held-out renders of each
of --score's tasks (what the image positions carry, per field) at the start, every --every updates and at the end.
Prints one JSON line per check; nothing is saved.

    python scripts/diagnostics/reading_focus_probe.py --tasks Points24 --updates 600    # 9 min, 2-core Xeon
    python scripts/diagnostics/reading_focus_probe.py --tasks NumberLine Blackjack EZPoints Points24 \
        BabyAI-GoToRedBall BabyAI-GoToObj BabyAI-GoToLocal BabyAI-PickupLoc BabyAI-PutNextLocal \
        Points24 Points24 Points24 --updates 1200 --every 600                     # 13 min: Points24 a third
    python scripts/diagnostics/reading_focus_probe.py --weights runs/s3_1200/weights --updates 0 \
        --score NumberLine Blackjack EZPoints Points24 BabyAI-GoToLocal       # score a folder: one check, no update

--image-size reads the images at another size from the start (the same patches, so more of them): the tower's
position embeddings are resampled (bicubic) to the new grid before the updates (docs/FINDINGS.md, 36).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
import torch.nn.functional as F

from vlmq_core import reading as rd
from vlmq_core import sight as S
from vlmq_core.model import ModelConfig, load_backbone
from vlmq_core.vision import WEIGHTS, TowerConfig, assemble, read_vision, train_only_vision

FIRST_STEP = 30_000
"""Renders of update i are those of update FIRST_STEP + i of a fourth step: seeds none of the build's three draw."""

POSITIONS = "vision_tower.embeddings.position_embedding.weight"


def resized(tower: TowerConfig, state: dict, size: int) -> tuple[TowerConfig, dict]:
    """`tower` reading `size`-pixel images with the same patches, and `state` with its position embeddings (one
    row per patch, row-major) resampled bicubically from the old grid to the new one."""
    old, new = tower.image_size // tower.patch_size, size // tower.patch_size
    grid = state[POSITIONS].float().view(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    rows = grid.permute(0, 2, 3, 1).reshape(new * new, -1)
    return dataclasses.replace(tower, image_size=size), {**state, POSITIONS: rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(WEIGHTS), help="a folder save_vision wrote")
    ap.add_argument(
        "--tasks",
        nargs="+",
        default=["Points24"],
        help="the tasks step 1's loss sees, in turn (repeat one to weight it)",
    )
    ap.add_argument("--updates", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--score", nargs="+", default=list(rd.GYM_CARDS), help="tasks checked")
    ap.add_argument("--renders", type=int, default=100, help="held-out renders a task per check")
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--image-size", type=int, help="read images at this size (a multiple of the patch size)")
    args = ap.parse_args()
    lm, tok, _ = load_backbone(ModelConfig(name="embedded", dtype="float32", device="cpu"))
    tower, state, built = read_vision(args.weights)
    if args.image_size and args.image_size != tower.image_size:
        tower, state = resized(tower, state, args.image_size)
    cfg = S.SightConfig(**{**S.BEFORE_ADDED, **built["sight"], "tower": tower})
    cfg = dataclasses.replace(cfg, tasks=list(args.tasks))
    vlm, proc = assemble(lm, tok, tower, state)
    params = train_only_vision(vlm)
    scale = vlm.get_input_embeddings().weight.detach().float().pow(2).mean().item()

    def check(done: int) -> None:
        vlm.eval()
        row = S.seen_check(vlm, proc, args.score, args.renders, alignment=cfg.alignment)
        vlm.train()
        fields = {k: round(v, 3) for k, v in row.items() if "/" in k}
        print(json.dumps({"updates": done, "tokens": round(row["tokens"], 4), **fields}), flush=True)

    check(0)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = S.one_cycle(opt, args.updates, args.lr)
    vlm.train()
    t0 = time.perf_counter()
    for step in range(args.updates):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            row = S.train_caption_step(vlm, proc, cfg, FIRST_STEP + step, opt, scale=scale, stage=4)
        sched.step()
        if (step + 1) % args.every == 0 or step + 1 == args.updates:
            seconds = (time.perf_counter() - t0) / (step + 1)
            print(f"{step + 1} updates, loss {row['loss']:.4f}, {seconds:.2f} s an update", flush=True)
            check(step + 1)


if __name__ == "__main__":
    main()
