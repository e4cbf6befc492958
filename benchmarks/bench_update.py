"""Time of one training update with and without the shared prompt prefix (a benchmark, not a test).

Builds ``--batches`` minibatches of ``--batch-size`` NumberLine turns from random valid replies (no dataset
or hub needed), then times the loss (``objective.minibatch_loss``, pure: both settings see the same state) +
``backward`` on each, alternating the two settings on the same minibatches (``ModelConfig.share_prefix`` on /
off) after one warm-up pass each. Prints milliseconds per update for SFT (Eq. 3) and AFSFT with the critic
(Eq. 4-7, next-prompt pass included), their ratios, and the largest loss difference between the settings. Then
times one batched greedy ``generate`` over ``--generate`` prompts both ways (3 alternating repeats) and checks the
replies agree. Run: ``python benchmarks/bench_update.py [--model embedded] [--batches 6] [--batch-size 8]
[--device auto] [--generate 32]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, SourceConfig, collect
from vlmq_core.losses import LossConfig
from vlmq_core.model import ModelConfig, PolicyConfig, load_policy
from vlmq_core.objective import minibatch_loss
from vlmq_core.tokens import build_batch


def time_update(policy, batch, loss_cfg: LossConfig, share: bool) -> tuple[float, float]:
    """Seconds of one loss + backward (gradients dropped), and the loss value."""
    policy.cfg.model.share_prefix = share
    policy.model.zero_grad(set_to_none=True)
    policy.critic.zero_grad(set_to_none=True)
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss, _ = minibatch_loss(policy, batch, loss_cfg, beta=0.0)
    loss.backward()
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, loss.item()


def time_generate(policy, prompts: list[str], share: bool) -> tuple[float, list[str]]:
    """Seconds of one batched greedy ``generate`` over `prompts` (text only), and the replies."""
    policy.cfg.model.share_prefix = share
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    replies = policy.generate(prompts, [None] * len(prompts), max_new_tokens=24, temperature=0.0)
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, replies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--generate", type=int, default=32, help="prompts in the batched generate comparison")
    args = ap.parse_args()

    policy = load_policy(PolicyConfig(model=ModelConfig(name=args.model, device=args.device)))
    policy.eval()  # no LoRA dropout: both settings compute the same function
    with tempfile.TemporaryDirectory() as tmp:
        buffer = TurnBuffer(tmp)
        collect(None, CollectConfig(task="NumberLine"), SourceConfig("random", 40, 0), buffer=buffer, progress=False)
        rng = np.random.default_rng(0)
        batches = [build_batch(policy, buffer.sample(args.batch_size, rng)) for _ in range(args.batches)]
        buffer_turns = buffer.sample(args.generate, rng)
    tokens = np.mean([b.inputs["input_ids"].numel() for b in batches])
    print(
        f"\n{policy.name} on {policy.device}: {args.batches} minibatches of {args.batch_size} turns, "
        f"{tokens:.0f} padded tokens each"
    )
    for name, loss_cfg in (("sft", LossConfig(actor="sft", critic_weight=0.0)), ("afsft", LossConfig())):
        for share in (True, False):  # warm-up
            time_update(policy, batches[0], loss_cfg, share)
        times: dict[bool, list[float]] = {True: [], False: []}
        diff = 0.0
        for batch in batches:
            t_on, l_on = time_update(policy, batch, loss_cfg, True)
            t_off, l_off = time_update(policy, batch, loss_cfg, False)
            times[True].append(t_on)
            times[False].append(t_off)
            diff = max(diff, abs(l_on - l_off))
        on, off = 1000 * np.mean(times[True]), 1000 * np.mean(times[False])
        print(
            f"{name:>6}: shared prefix {on:7.0f} ms | full pass {off:7.0f} ms | speed-up x{off / on:.2f} "
            f"| max |loss difference| {diff:.1e}"
        )
    prompts = [turn.prompt for turn, _ in buffer_turns]
    for share in (True, False):  # warm-up
        time_generate(policy, prompts[:2], share)
    gen: dict[bool, list[float]] = {True: [], False: []}
    same = True
    for _ in range(3):
        t_on, r_on = time_generate(policy, prompts, True)
        t_off, r_off = time_generate(policy, prompts, False)
        gen[True].append(t_on)
        gen[False].append(t_off)
        same = same and r_on == r_off
    on, off = 1000 * np.mean(gen[True]), 1000 * np.mean(gen[False])
    print(
        f"{'generate':>8}: {len(prompts)} greedy replies (<= 24 tokens): shared prefix {on:7.0f} ms | left padding "
        f"{off:7.0f} ms | speed-up x{off / on:.2f} | same replies: {same}"
    )


if __name__ == "__main__":
    main()
