"""How fast the embedded VLM's tower learns to read (step 1 of vlmq_core.sight), without the notebook around it.

Runs step 1 alone through ``sight.train_sight`` on the real embedded language model's embeddings, checkpointing into
--folder every 100 updates (a killed run continues there when given the same arguments; other settings need
another folder). Every --every updates it prints the held-out check (``sight.seen_check``): the share
of held-out caption tokens the image positions carry exactly and, per task, of renders whose every field reads right
from that text (``seen`` in notebook 00); --fields adds the share per field.

    python scripts/diagnostics/sight_probe.py --steps 3000 --every 500 --bf16
    python scripts/diagnostics/sight_probe.py --steps 600 --lr 2e-3 --tasks NumberLine Blackjack --folder runs/p1
    python scripts/diagnostics/sight_probe.py --steps 3000 --bf16 --alignment monotonic --folder runs/p_mono
    python scripts/diagnostics/sight_probe.py --steps 3000 --bf16 --image-size 320 --tasks Blackjack Points24 \
        --folder runs/p_320      # more pixels per card index (400 image positions)
    python scripts/diagnostics/sight_probe.py --answer-updates 5 [--bf16]     # step 2's seconds per update, and exit
"""

from __future__ import annotations

import argparse
import time

import torch

from vlmq_core import reading as rd
from vlmq_core.model import ModelConfig, load_backbone
from vlmq_core.sight import SightConfig, train_answer_step, train_sight
from vlmq_core.vision import TowerConfig, assemble, train_only_vision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=500, help="updates between held-out checks")
    ap.add_argument("--lr", type=float, default=SightConfig.caption_lr)
    ap.add_argument("--batch", type=int, default=SightConfig.caption_batch)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--held-out", type=int, default=8, help="held-out renders per task at each check")
    ap.add_argument("--tasks", nargs="*", default=list(rd.TASKS))
    ap.add_argument("--layers", type=int, default=TowerConfig.layers)
    ap.add_argument("--hidden", type=int, default=TowerConfig.hidden_size)
    ap.add_argument("--image-size", type=int, default=TowerConfig.image_size, help="side images are resized to")
    ap.add_argument("--patch", type=int, default=TowerConfig.patch_size, help="patch side: (size/patch)^2 positions")
    ap.add_argument("--alignment", choices=["fixed", "monotonic"], default=SightConfig.alignment, help="placement")
    ap.add_argument("--bf16", action="store_true", help="run each update under bfloat16 autocast (AVX512-BF16, AMX)")
    ap.add_argument("--folder", default="runs/sight_probe", help="checkpoint folder (resumes a run of equal settings)")
    ap.add_argument("--fields", action="store_true", help="print each check's share per field too")
    ap.add_argument("--answer-updates", type=int, default=0, help="only time this many step-2 updates, then exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm, tok, _ = load_backbone(ModelConfig(name="embedded", dtype="float32", device="cpu"))
    tower = TowerConfig(
        image_size=args.image_size,
        patch_size=args.patch,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        layers=args.layers,
    )
    vlm, proc = assemble(lm, tok, tower)
    cfg = SightConfig(
        tasks=args.tasks,
        tower=tower,
        caption_steps=args.steps,
        caption_batch=args.batch,
        caption_lr=args.lr,
        answer_steps=0,
        alignment=args.alignment,
        bf16=args.bf16,
        check_every=args.every,
        check_renders=args.held_out,
    )
    if args.answer_updates:
        params = train_only_vision(vlm)
        opt = torch.optim.AdamW(params, lr=SightConfig.answer_lr, weight_decay=0.01)
        vlm.train()
        for step in range(args.answer_updates):
            t0 = time.time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                row = train_answer_step(vlm, proc, cfg, step, opt)
            print(f"step-2 update {step + 1}: {time.time() - t0:.2f} s, loss {row['loss']:.3f}", flush=True)
        return
    start = time.time()
    log = train_sight(vlm, proc, cfg, args.folder, every=min(100, args.every or 100))
    updates = [r for r in log if r["stage"] == 1]
    print(
        f"{len(updates)} updates in the log; {time.time() - start:.0f} s here; last 100 updates "
        f"{sum(r['seconds'] for r in updates[-100:]) / len(updates[-100:]):.2f} s each, "
        f"{sum(r['data_seconds'] for r in updates[-100:]) / len(updates[-100:]):.2f} s of it rendering"
    )
    for r in log:
        if r["stage"] == "check":
            line = ", ".join(f"{k.removeprefix('BabyAI-')} {v:.0%}" for k, v in r.items() if "/" in k)
            print(f"check {r['step']}: tokens {r['tokens']:.1%}" + (f"\n  {line}" if args.fields else ""))


if __name__ == "__main__":
    main()
