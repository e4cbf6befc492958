"""Diagnostic: evaluate saved policies (trainer run dirs or checkpoint folders) on more held-out episodes.

Notebook 03 evaluates each run on 20 episodes (one standard error ~11 points near 50%); this re-evaluates its
final checkpoints on as many episodes as asked, on seeds that neither the dataset nor the notebook used.

    python scripts/diagnostics/eval_checkpoint.py runs/03_offline_afsft/sft runs/03_offline_afsft/afsft eval=100

Arguments: folders (``vlmq_core.model.load_checkpoint``), or ``base`` for the untrained embedded model; options
``eval`` episodes (default 100), ``seed`` the first evaluation seed (default 20 000), ``task`` (default
NumberLine), ``device`` (default: the one each checkpoint was saved with).
"""

import json
import math
import sys
import time

from vlmq_core.collect import CollectConfig, evaluate
from vlmq_core.model import PolicyConfig, load_checkpoint, load_policy

opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
folders = [a for a in sys.argv[1:] if "=" not in a]
episodes = int(opts.get("eval", 100))
cfg = CollectConfig(task=opts.get("task", "NumberLine"), num_envs=10)
for folder in folders:
    t0 = time.time()
    policy = load_policy(PolicyConfig()) if folder == "base" else load_checkpoint(folder, device=opts.get("device"))
    result = evaluate(policy, cfg, episodes, seed=int(opts.get("seed", 20_000)), progress=False)
    se = math.sqrt(result["eval/success"] * (1 - result["eval/success"]) / episodes)
    print(folder, json.dumps(result), f"success SE {se:.3f}", f"{time.time() - t0:.0f} s", flush=True)
    del policy
