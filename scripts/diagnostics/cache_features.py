"""Diagnostic (README findings 2 and 7): cache a policy's reply-position hidden states and log-probs over a
dataset, for fast critic-only experiments. The policy is the run's SFT checkpoint, another checkpoint folder
given as a third argument, or ``base`` (the embedded model with zero LoRA).

    python scripts/diagnostics/cache_features.py runs/03_offline_afsft /tmp/features.pt         # SFT checkpoint
    python scripts/diagnostics/cache_features.py runs/03_offline_afsft /tmp/base.pt base        # 2-5 min here
"""

import sys
import time

import torch

from vlmq_core.buffer import TurnBuffer
from vlmq_core.model import load_policy
from vlmq_core.tokens import build_batch
from vlmq_core.update import forward_reply

run, out_path = sys.argv[1], sys.argv[2]
start = time.time()
policy = load_policy()
checkpoint = sys.argv[3] if len(sys.argv) > 3 else f"{run}/sft/checkpoint"
if checkpoint != "base":
    policy.load(checkpoint)
policy.eval()
pairs = TurnBuffer(f"{run}/data").transitions()
rows = []
with torch.no_grad():
    for i in range(0, len(pairs), 16):
        chunk = pairs[i : i + 16]
        batch = build_batch(policy, chunk)
        fwd = forward_reply(policy, batch, with_critic=False)
        h0 = lp0 = None
        if batch.next_inputs is not None:
            h0 = policy.hidden(batch.next_inputs).flatten(0, 1)[batch.next_last_pos]
            lp0 = policy.lm_logits(h0).log_softmax(-1)
        for j, (turn, _) in enumerate(chunk):
            idx = (batch.turn_idx == j).nonzero().squeeze(1)
            k = (batch.next_turn_idx == j).nonzero().squeeze(1)
            rows.append(
                {
                    "h": fwd.h[idx].clone(),
                    "lp": fwd.logits[idx].log_softmax(-1).half(),
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
