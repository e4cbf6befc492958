#!/usr/bin/env bash
# Set up, then run the main job: papermill executes the notebooks on the embedded model into nbs_outputs/.
# Extra arguments go to papermill, e.g. `bash scripts/main.sh -y "overrides: [train.steps=400]"`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
mkdir -p nbs_outputs
papermill notebooks/03_offline_afsft.ipynb nbs_outputs/03_offline_afsft.ipynb --cwd . -k python3 "$@"
python -c "import json; print(json.dumps({k: v for k, v in json.load(open('nbs_outputs/03_offline_afsft.metrics.json')).items() if k in ('hardware', 'base', 'sft', 'afsft')}, indent=1))"
