#!/usr/bin/env bash
# Set up, then run the main job: papermill executes the notebooks on the embedded model into nbs_outputs/
# (01 base models prompted, 02 the datasets (those 03-05 train on, and a survey of every task), 03 offline AFSFT,
# 04 offline to online and 05 the max-Q ablation, which reuses 03's runs),
# showing the running notebook and section on papermill's progress line (vlmq_core/nbengine.py), printing each
# notebook's wall time, then the headline numbers from their metrics files.
#   bash scripts/main.sh                 # every notebook, in order
#   bash scripts/main.sh 03 04           # only these (by number)
#   bash scripts/main.sh 06              # MiniWoB++ in Debian's Chromium (not in the default job: about 61 min on 2 cores)
#   bash scripts/main.sh 00              # rebuild the embedded VLM's eyes (its weights ship, so the main job never does)
#   bash scripts/main.sh 03 -y "overrides: [train.steps=400]"   # later arguments go to papermill for each notebook
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
all=(01_base_model_prompting 02_dataset_building 03_offline_afsft 04_offline_to_online 05_maxq_ablation)
extra=(00_embedded_vlm 06_miniwob)  # run only when named
chosen=()
while [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]{2}$ ]]; do
  match=""
  for name in "${all[@]}" "${extra[@]}"; do [[ "$name" == "$1"_* ]] && match="$name"; done
  if [ -z "$match" ]; then
    echo "main.sh: no notebook numbered $1 (have: ${all[*]} ${extra[*]})" >&2
    exit 2
  fi
  chosen+=("$match")
  shift
done
[ ${#chosen[@]} -eq 0 ] && chosen=("${all[@]}")
mkdir -p nbs_outputs
times=()
for i in "${!chosen[@]}"; do
  name="${chosen[$i]}"
  echo "== notebook $((i + 1))/${#chosen[@]}: $name =="
  start=$(date +%s)
  papermill "notebooks/$name.ipynb" "nbs_outputs/$name.ipynb" --cwd . -k python3 --engine vlmq "$@"
  times+=("$name $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s")
  echo "== $name done: ${times[-1]#* } =="
done
printf '%s\n' "wall time per notebook:" "${times[@]/#/  }"
python - <<'PY'
import json
from pathlib import Path

out = {}
path = Path("nbs_outputs/01_base_model_prompting.metrics.json")
if path.is_file():
    m = json.loads(path.read_text())
    out["hardware"] = m["hardware"]
    out["01_base_model_prompting"] = {
        model: {task: {k: {"valid": r["valid"], "success": r["success"]} for k, r in runs.items()} for task, runs in tasks.items()}
        for model, tasks in m["results"].items()
    }
path = Path("nbs_outputs/02_dataset_building.metrics.json")
if path.is_file():
    m = json.loads(path.read_text())
    pick = ("episodes", "success", "valid")
    out["02_dataset_building"] = {
        task: {r["source"]: {k: r[k] for k in pick} for r in record["sources"]} for task, record in m["survey"].items()
    }
path = Path("nbs_outputs/03_offline_afsft.metrics.json")
if path.is_file():
    m = json.loads(path.read_text())
    out["hardware"] = m["hardware"]
    out["03_offline_afsft"] = {k: v for k, v in m.items() if k in ("base", "sft", "afsft")}
path = Path("nbs_outputs/04_offline_to_online.metrics.json")
if path.is_file():
    m = json.loads(path.read_text())
    keys = ("base", "offline", "online", "exploration", "data")
    out["04_offline_to_online"] = {
        t: {k: v for k, v in r.items() if k in keys} for t, r in m.items() if isinstance(r, dict) and "task" in r
    }
path = Path("nbs_outputs/05_maxq_ablation.metrics.json")
if path.is_file():
    m = json.loads(path.read_text())
    out["05_maxq_ablation"] = {
        arm: r | {"pi_unseen": m["usage"][arm]["tokens/pi_unseen"]} for arm, r in m["results"].items()
    }
path = Path("nbs_outputs/06_miniwob.metrics.json")
if path.is_file():
    m = json.loads(path.read_text())
    out["06_miniwob"] = {
        run: {task: {k: r[k] for k in ("success", "valid", "episodes")} for task, r in by_task.items()}
        for run, by_task in m["results"].items()
    }
print(json.dumps(out, indent=1))
PY
