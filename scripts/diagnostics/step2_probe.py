"""What step 2 of the embedded VLM's build (answers through the frozen language model) does to the eyes, and what
puts them back (docs/FINDINGS.md, 32).

From a folder of vision weights (--weights; the 12 000 + 200-update build that shipped before step 3 is commit
370db4f's ``vlmq_core/weights/embedded_vlm``), it runs --repair updates of step 1's loss (peak --repair-lr, renders
step 1 never drew), checking the held-out renders (``sight.seen_check``, 8 a task) every 200; then, from those
repaired weights, --answer updates of step 2 twice: as the build runs it, and with step 1's loss on a step-1 batch
added to each update (``mixed``, weight 1), each followed by the check. Prints one JSON line per check.

    mkdir -p runs/w2 && for f in tower.json vision.safetensors; do
        git show 370db4f:vlmq_core/weights/embedded_vlm/$f > runs/w2/$f; done
    python scripts/diagnostics/step2_probe.py --weights runs/w2 --repair 600 --answer 50     # 21 min, 2-core Xeon
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vlmq_core import sight as S
from vlmq_core.model import ModelConfig, load_backbone
from vlmq_core.vision import assemble, load_vision_state, read_vision, train_only_vision, vision_state_dict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="a folder save_vision wrote")
    ap.add_argument("--repair", type=int, default=600, help="step-1 updates before step 2")
    ap.add_argument("--repair-lr", type=float, default=3e-4)
    ap.add_argument("--answer", type=int, default=50, help="step-2 updates of each kind")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm, tok, _ = load_backbone(ModelConfig(name="embedded", dtype="float32", device="cpu"))
    tower, state, built = read_vision(args.weights)
    cfg = S.SightConfig(**{**S.BEFORE_ADDED, **built["sight"], "tower": tower})
    vlm, proc = assemble(lm, tok, tower, state)
    params = train_only_vision(vlm)
    table = vlm.get_input_embeddings().weight.detach()
    scale = table.float().pow(2).mean().item()

    def check(tag: str) -> None:
        vlm.eval()
        row = S.seen_check(vlm, proc, cfg.tasks, 8, alignment=cfg.alignment)
        vlm.train()
        print(json.dumps({"tag": tag, **{k: round(v, 3) for k, v in row.items()}}), flush=True)

    check("start")
    opt = torch.optim.AdamW(params, lr=args.repair_lr, weight_decay=0.01)
    sched = S.one_cycle(opt, args.repair, args.repair_lr)
    vlm.train()
    for step in range(args.repair):  # step-1 renders from 20 000 updates on: none of the build's
        with torch.autocast("cpu", dtype=torch.bfloat16):
            S.train_caption_step(vlm, proc, cfg, 20_000 + step, opt, scale=scale)
        sched.step()
        if (step + 1) % 200 == 0:
            check(f"step 1 again, {step + 1} updates")
    repaired = {k: v.clone() for k, v in vision_state_dict(vlm).items()}

    def mixed(step: int, opt: torch.optim.Optimizer) -> dict[str, float]:
        batch = S._round(cfg, 2, step, cfg.answer_batch)
        inputs = S.answer_inputs(proc, [(r.image, *r.questions[r.seed % len(r.questions)]) for r in batch])
        labels = inputs.pop("labels")
        answer = S.answer_loss(vlm(**inputs).logits, labels)
        captions = S._round(cfg, 1, 50_000 + step, cfg.caption_batch)
        e = S.image_embeddings(vlm, S._pixels(proc, [r.image for r in captions]))
        ids, lengths, spaced = S.caption_labels(proc.tokenizer, [r.caption for r in captions], tower.image_tokens)
        caption, _ = S.monotonic_caption_loss(e, ids, lengths, spaced, table, S.pad_id(proc.tokenizer), scale)
        opt.zero_grad(set_to_none=True)
        (answer + caption).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return {"loss": answer.item(), "caption": caption.item()}

    for name, fn in (("as built", lambda s, o: S.train_answer_step(vlm, proc, cfg, s, o)), ("mixed", mixed)):
        load_vision_state(vlm, repaired)
        opt = torch.optim.AdamW(params, lr=cfg.answer_lr, weight_decay=0.01)
        sched = S.one_cycle(opt, args.answer, cfg.answer_lr)
        t0 = time.perf_counter()
        for step in range(args.answer):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                row = fn(step, opt)
            sched.step()
        seconds = (time.perf_counter() - t0) / args.answer
        print(f"step 2 {name}: last answer loss {row['loss']:.3f}, {seconds:.2f} s an update", flush=True)
        check(f"step 2 {name}, {args.answer} updates")


if __name__ == "__main__":
    main()
