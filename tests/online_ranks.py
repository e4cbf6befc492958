"""Run by tests/test_distributed.py under `accelerate launch`: an online run whose every process then saves the
weights and head statistics it holds, so the test can compare the processes."""

import sys
from pathlib import Path

import torch

from vlmq_core import distributed
from vlmq_core.run import load_config, online

if __name__ == "__main__":
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    result = online(load_config(None, overrides), progress=False)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.policy.state_dict(), out / f"rank-{distributed.rank()}.pt")
