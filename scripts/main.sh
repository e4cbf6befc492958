#!/usr/bin/env bash
# Set up, then run the main job: papermill executes the notebooks on the embedded model into nbs_outputs/
# (03 offline AFSFT, then 04 offline to online, which reuses 03's NumberLine dataset).
# Extra arguments go to papermill for every notebook, e.g. `bash scripts/main.sh -y "overrides: [train.steps=400]"`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
mkdir -p nbs_outputs
for name in 03_offline_afsft 04_offline_to_online; do
  papermill "notebooks/$name.ipynb" "nbs_outputs/$name.ipynb" --cwd . -k python3 "$@"
done
python - <<'PY'
import json

offline = json.load(open("nbs_outputs/03_offline_afsft.metrics.json"))
online = json.load(open("nbs_outputs/04_offline_to_online.metrics.json"))
keys = ("base", "offline", "online", "exploration", "data")
print(json.dumps({
    "hardware": offline["hardware"],
    "03_offline_afsft": {k: v for k, v in offline.items() if k in ("base", "sft", "afsft")},
    "04_offline_to_online": {t: {k: v for k, v in r.items() if k in keys} for t, r in online.items() if isinstance(r, dict) and "task" in r},
}, indent=1))
PY
