#!/usr/bin/env bash
# Set up, then lint and run every test (unit tests on tiny random models, a few on the embedded model,
# notebooks smoke-run through papermill with tiny parameters). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
ruff format --check .
python -m pytest -q "$@"
