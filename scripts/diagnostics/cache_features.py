"""Diagnostic (docs/FINDINGS.md, findings 2 and 3): cache a policy's reply-position hidden states and log-probs
over a dataset, for fast critic-only experiments (``critic_probe.py``). The policy is a trained run (its run_dir
or checkpoint folder, e.g. the SFT run of notebook 03) or ``base`` (the embedded model, zero LoRA).

    python scripts/diagnostics/cache_features.py runs/numberline/data runs/numberline/sft /tmp/features.pt
    python scripts/diagnostics/cache_features.py runs/numberline/data base /tmp/base.pt     # 2-5 min here
"""

import sys
import time

import torch

from vlmq_core.buffer import TurnBuffer
from vlmq_core.model import load_checkpoint, load_policy
from vlmq_core.objective import reply_heads
from vlmq_core.tokens import build_batch

data, checkpoint, out_path = sys.argv[1:4]
start = time.time()
policy = load_policy() if checkpoint == "base" else load_checkpoint(checkpoint)
policy.eval()
pairs = TurnBuffer(data).transitions()
rows = []
with torch.no_grad():
    for i in range(0, len(pairs), 16):
        chunk = pairs[i : i + 16]
        batch = build_batch(policy, chunk)
        heads = reply_heads(policy, batch)
        h0 = lp0 = None
        if batch.next_inputs is not None:
            h0 = policy.hidden(batch.next_inputs).flatten(0, 1)[batch.next_last_pos]
            lp0 = policy.lm_logits(h0).log_softmax(-1)
        for j, (turn, _) in enumerate(chunk):
            idx = (batch.turn_idx == j).nonzero().squeeze(1)
            k = (batch.next_turn_idx == j).nonzero().squeeze(1)
            rows.append(
                {
                    "h": heads.h[idx].clone(),
                    "lp": heads.logits[idx].log_softmax(-1).half(),
                    "tok": batch.tokens[idx].clone(),
                    "r": float(turn.reward),
                    "d": float(turn.done),
                    "h0": h0[k[0]].clone() if len(k) else None,
                    "lp0": lp0[k[0]].half() if len(k) else None,
                    "strategy": turn.strategy,
                    "obs": turn.obs,
                }
            )
        print(f"{i + len(chunk)}/{len(pairs)} turns, {time.time() - start:.0f} s", flush=True)
torch.save(rows, out_path)
