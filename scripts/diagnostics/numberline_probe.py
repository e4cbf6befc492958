"""Diagnostic: what a policy and its critic decide in every NumberLine state, without playing episodes.

For each of the 30 states with target != current, the dataset's prompt is rewritten to that observation and
both replies ``[action] +`` / ``[action] -`` are scored (``vlmq_core.inspector.token_views``, terminal turns).
At the action token it reports, averaged over states:

- ``p_correct``: pi(right move) / (pi(+) + pi(-)); ``greedy``: fraction of states where the right move is likelier;
- ``critic_order``: fraction of states where Q(h, right move) > Q(h, wrong move) (0.5 exactly when one action
  token is preferred everywhere: no per-state signal);
- ``qgap``: mean unnormalised Q(h, right) - Q(h, wrong); ``mass_pm``: pi(+) + pi(-).

Noise-free, unlike a 20-30 episode evaluation (one standard error ~10 points). Run as a script, it trains a run
config (``vlmq_core.run.train``, exactly ``vlmq train``) and prints the probe every ``--every`` updates (also
written to the run's metrics.jsonl as ``probe/*``), then the trained filter over the dataset and the evaluation:

    python scripts/diagnostics/numberline_probe.py --config configs/numberline_afsft.yaml --every 25 \\
        run_dir=runs/probe/afsft eval.episodes=100 eval.seed=20000

``--oracle``: instead, plain SFT on the dataset's good moves only (valid replies with reward >= 0), the filter a
perfect critic would give; it shows how fast the actor can learn the decision (docs/FINDINGS.md, finding 6).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from vlmq_core import config
from vlmq_core.buffer import TurnBuffer
from vlmq_core.inspector import filter_summary, token_views
from vlmq_core.model import Policy
from vlmq_core.run import load_config, open_dataset, train
from vlmq_core.turns import Turn


def states() -> list[tuple[int, int]]:
    return [(t, c) for t in range(6) for c in range(6) if t != c]


def prompt_for(base_prompt: str, target: int, current: int) -> str:
    head = base_prompt.rsplit("Observation:", 1)[0]
    return head + f"Observation: Target: {target}. Current: {current}."


@torch.no_grad()
def decision(policy: Policy, base_prompt: str) -> dict[str, float]:
    """The probe's averages (see the module docstring) under ``probe/`` keys."""
    trans = [
        (Turn("probe", 0, "NumberLine", prompt_for(base_prompt, t, c), None, f"[action] {a}", 0.0, True), None)
        for t, c in states()
        for a in "+-"
    ]
    views = [v for i in range(0, len(trans), 20) for v in token_views(policy, trans[i : i + 20])]
    out = dict.fromkeys(("p_correct", "greedy", "critic_order", "qgap", "mass_pm"), 0.0)
    for k, (t, c) in enumerate(states()):
        plus, minus = views[2 * k], views[2 * k + 1]
        good, bad = (plus, minus) if t > c else (minus, plus)
        lg, lb = good.logp[-2], bad.logp[-2]  # the action token, last before the stop token
        p_good = 1.0 / (1.0 + math.exp(lb - lg))
        out["p_correct"] += p_good
        out["greedy"] += float(p_good > 0.5)
        out["critic_order"] += float(good.q_taken[-2] > bad.q_taken[-2])
        out["qgap"] += good.q_taken[-2] - bad.q_taken[-2]
        out["mass_pm"] += math.exp(lg) + math.exp(lb)
    return {f"probe/{k}": v / len(states()) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a NumberLine run config (configs/numberline_afsft.yaml)")
    ap.add_argument("--every", type=int, default=25, help="probe every this many updates")
    ap.add_argument("--oracle", action="store_true", help="SFT on the dataset's good moves only")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, as for `vlmq train`")
    args = ap.parse_args()
    t0 = time.time()
    cfg = load_config(args.config, args.overrides)
    if args.oracle:
        good = [turn for turn in open_dataset(cfg, must_exist=True).turns if turn.valid and turn.reward >= 0]
        folder = Path(cfg.run_dir) / "oracle_data"
        oracle = TurnBuffer(folder)
        if not len(oracle):
            oracle.add(good)
        print(f"oracle: SFT on the {len(good)} good moves")
        cfg = config.apply_overrides(cfg, {"data.path": str(folder), "loss.actor": "sft", "loss.critic_weight": 0})
    base_prompt = open_dataset(cfg, must_exist=True).turns[0].prompt

    def probe(trainer) -> dict[str, float]:
        m = decision(trainer.policy, base_prompt)
        print(f"update {trainer.step}", {k: round(v, 3) for k, v in m.items()}, f"{time.time() - t0:.0f} s", flush=True)
        return m

    result = train(cfg, progress=False, callback=probe, callback_every=args.every)
    print(f"trained in {time.time() - t0:.0f} s")
    if cfg.loss.uses_critic:
        print(json.dumps(filter_summary(result.policy, open_dataset(cfg).transitions(), loss=cfg.loss)))
    print(json.dumps(result.eval), f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
