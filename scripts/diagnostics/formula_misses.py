"""Which formulas the embedded VLM's eyes misread, by length (docs/FINDINGS.md, 36).

On --renders held-out renders of --task (EZPoints or Points24; seeds from ``reading.HELD_OUT_SEED``, the renders
notebook 00 and ``reading_focus_probe.py`` score), it reads the text the image positions carry (``sight.seen_text``,
no language-model pass), prints each render whose formula field reads wrong (index, seed, truth -> read), then the
misses by the length in tokens of the formula line the picture shows (the field up to its first ". ": a finished
game's "= value" included, its verdict sentence not).

    python scripts/diagnostics/formula_misses.py                       # the shipped weights, 400 Points24 renders
    python scripts/diagnostics/formula_misses.py --weights runs/e3/weights --renders 100 --task EZPoints
"""

from __future__ import annotations

import argparse

import torch

from vlmq_core import reading as rd
from vlmq_core import sight as S
from vlmq_core.model import ModelConfig, load_backbone
from vlmq_core.vision import WEIGHTS, assemble, read_vision

BINS = ((1, 4), (4, 6), (6, 8), (8, 10), (10, 99))
"""Token-count bins of the table, [low, high)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(WEIGHTS), help="a folder save_vision wrote")
    ap.add_argument("--task", default="Points24", choices=["EZPoints", "Points24"])
    ap.add_argument("--renders", type=int, default=400)
    args = ap.parse_args()
    lm, tok, _ = load_backbone(ModelConfig(name="embedded", dtype="float32", device="cpu"))
    tower, state, built = read_vision(args.weights)
    vlm, proc = assemble(lm, tok, tower, state)
    vlm.eval()
    rs = [rd.reading(args.task, rd.HELD_OUT_SEED + i) for i in range(args.renders)]
    with torch.no_grad():
        alignment = {**S.BEFORE_ADDED, **built["sight"]}["alignment"]  # (weights built before it: fixed)
        texts = S.seen_text(vlm, proc, [r.image for r in rs], alignment=alignment)
    rows = []
    for i, (r, text) in enumerate(zip(rs, texts, strict=True)):
        truth, got = r.fields["formula"], rd.fields(args.task, text).get("formula")
        line = truth.split(". ")[0]
        rows.append((len(tok(" " + line, add_special_tokens=False).input_ids), got == truth))
        if got != truth:
            print(f"{i} seed {r.seed}: {truth!r} -> {got!r}")
    missed = sum(not ok for _, ok in rows)
    print(f"{args.task} formula read right on {1 - missed / len(rows):.1%} of {len(rows)} renders ({missed} missed)")
    for lo, hi in BINS:
        got = [ok for n, ok in rows if lo <= n < hi]
        span = f"{lo}-{hi - 1}" if hi < BINS[-1][1] else f"{lo} or more"
        print(f"  {span} tokens: {len(got)} renders, {sum(not ok for ok in got)} missed")


if __name__ == "__main__":
    main()
