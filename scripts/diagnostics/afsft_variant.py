"""Diagnostic: one AFSFT run of notebook 03's settings on an existing dataset, with critic variants.

Trains AFSFT from the base model for ``steps`` updates (default 100; 8 turns each, LoRA lr 3e-4, critic lr
6e-4, 10-update warmups, filter from update 20, critic at the data's lowest return-to-go), then prints the
trained filter's ``filter_summary`` over the dataset and an ``eval``-episode evaluation (default 20). Behind
the README's tables of critic variants.

    python scripts/diagnostics/afsft_variant.py runs/03_offline_afsft/data whiten=1 n=32 steps=300 eval=30

Options: ``whiten`` (1/0), ``we`` whiten_every, ``wb`` whiten_beta, ``tau``, ``steps``, ``fs`` filter start,
``n`` td_steps (n-step targets inside a reply), ``beta`` the filter threshold after the start (PopArt units,
default 0), ``adv`` the filter's advantage (``q``: Eq. 5, ``td``), ``cgrad=0`` (the critic loss does not reach
LoRA: ``LossConfig.critic_trains_backbone``), ``replay`` critic-only steps per update (``vlmq_core.replay``;
``rbt`` turns each, default 32; ``win`` the window in updates, default 16), ``lr`` / ``lrc`` the LoRA / critic
learning rates (default 3e-4 / 6e-4), ``seed`` the trainer's seed (minibatch draws, LoRA dropout; default 0, the
notebook's), ``eval`` episodes (``es`` the first evaluation seed, default 10 000), ``probe`` (every this many
updates print ``numberline_probe.decision``; 0: never) and
``oracle=1``: instead of AFSFT, plain SFT on the dataset's good moves only (valid replies with reward >= 0),
the filter a perfect critic would give; it shows how fast the actor can learn the decision.
"""

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, evaluate
from vlmq_core.inspect import filter_summary
from vlmq_core.model import PolicyConfig, load_policy
from vlmq_core.replay import CriticReplayConfig
from vlmq_core.trainer import TrainConfig, Trainer
from vlmq_core.update import LossConfig

sys.path.insert(0, str(Path(__file__).parent))
from numberline_probe import decision  # noqa: E402

args = dict(a.split("=", 1) for a in sys.argv[2:])
t0 = time.time()
buffer = TurnBuffer(sys.argv[1])
oracle = args.get("oracle", "0") == "1"
if oracle:
    good = [turn for turn in buffer.turns if turn.valid and turn.reward >= 0]
    buffer = TurnBuffer(tempfile.mkdtemp(prefix="oracle_"))
    buffer.add(good)
    buffer.flush()
    print(f"oracle: SFT on the {len(good)} good moves")
base = PolicyConfig().critic
critic = replace(
    base,
    init_q=buffer.min_return_to_go(),
    whiten=args.get("whiten", "1") == "1",
    whiten_every=int(args.get("we", base.whiten_every)),
    whiten_beta=float(args.get("wb", base.whiten_beta)),
    tau=float(args.get("tau", base.tau)),
)
policy = load_policy(replace(PolicyConfig(), critic=critic))
cfg = TrainConfig(
    steps=int(args.get("steps", 100)),
    batch_size=8,
    grad_accum=1,
    lr_lora=float(args.get("lr", 3e-4)),
    lr_critic=float(args.get("lrc", 6e-4)),
    warmup_lora=10,
    warmup_critic=10,
    seed=int(args.get("seed", 0)),
    checkpoint_every=0,
    critic_replay=CriticReplayConfig(
        steps=int(args.get("replay", 0)), batch_turns=int(args.get("rbt", 32)), window=int(args.get("win", 16))
    ),
)
loss = LossConfig(
    actor="sft" if oracle else "afsft",
    critic_weight=0.0 if oracle else 1.0,
    filter_start_step=int(args.get("fs", 20)),
    td_steps=int(args.get("n", 1)),
    advantage=args.get("adv", "q"),
    beta=float(args.get("beta", 0.0)),
    critic_trains_backbone=args.get("cgrad", "1") == "1",
)
base_prompt = buffer.turns[0].prompt


def probe(p):
    m = decision(p, base_prompt)
    print(f"update {trainer.step}", {k: round(v, 3) for k, v in m.items()}, f"{time.time() - t0:.0f} s", flush=True)
    return m


trainer = Trainer(policy, buffer, cfg, loss, eval_fn=probe, eval_every=int(args.get("probe", 0)))
history = trainer.fit(progress=False)
print(f"trained in {time.time() - t0:.0f} s")
keys = ("step", "actor/kept_frac", "critic/loss", "critic/adv_std", "train/grad_norm", "time/update_s")
for m in history[::10]:
    print({k: round(m[k], 3) for k in keys if k in m})
if not oracle:
    print(json.dumps(filter_summary(policy, buffer.transitions(), loss=loss)))
eval_cfg = CollectConfig(task="NumberLine", num_envs=10)
result = evaluate(policy, eval_cfg, int(args.get("eval", 20)), seed=int(args.get("es", 10_000)))
print(json.dumps(result), f"total {time.time() - t0:.0f} s")
