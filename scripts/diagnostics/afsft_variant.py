"""Diagnostic: one AFSFT run of notebook 03's settings on an existing dataset, with critic variants.

Trains AFSFT from the base model for 100 updates (8 turns each, LoRA lr 3e-4, critic lr 6e-4, 10-update
warmups, filter from update 20, critic at the data's lowest return-to-go), then prints the trained filter's
``filter_summary`` over the dataset and a 20-episode evaluation. Behind the README's whitening table.

    python scripts/diagnostics/afsft_variant.py runs/03_offline_afsft/data whiten=1 we=10 wb=0.05 tau=0.03

Options: ``whiten`` (1/0), ``we`` whiten_every, ``wb`` whiten_beta, ``tau``, ``steps``, ``eval`` episodes.
"""

import json
import sys
import time
from dataclasses import replace

from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, evaluate
from vlmq_core.inspect import filter_summary
from vlmq_core.model import PolicyConfig, load_policy
from vlmq_core.trainer import TrainConfig, Trainer
from vlmq_core.update import LossConfig

args = dict(a.split("=", 1) for a in sys.argv[2:])
t0 = time.time()
buffer = TurnBuffer(sys.argv[1])
critic = replace(
    PolicyConfig().critic,
    init_q=buffer.min_return_to_go(),
    whiten=args.get("whiten", "1") == "1",
    whiten_every=int(args.get("we", 100)),
    whiten_beta=float(args.get("wb", 0.01)),
    tau=float(args.get("tau", 0.008)),
)
policy = load_policy(replace(PolicyConfig(), critic=critic))
cfg = TrainConfig(
    steps=int(args.get("steps", 100)),
    batch_size=8,
    grad_accum=1,
    lr_lora=3e-4,
    lr_critic=6e-4,
    warmup_lora=10,
    warmup_critic=10,
    seed=0,
    checkpoint_every=0,
)
history = Trainer(policy, buffer, cfg, LossConfig(actor="afsft", filter_start_step=20)).fit(progress=False)
print(f"trained in {time.time() - t0:.0f} s")
keys = ("step", "actor/kept_frac", "critic/loss", "critic/adv_std", "train/grad_norm", "time/update_s")
for m in history[::10]:
    print({k: round(m[k], 3) for k in keys if k in m})
print(json.dumps(filter_summary(policy, buffer.transitions())))
result = evaluate(policy, CollectConfig(task="NumberLine", num_envs=10), int(args.get("eval", 20)))
print(json.dumps(result), f"total {time.time() - t0:.0f} s")
