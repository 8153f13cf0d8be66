#!/usr/bin/env bash
# The main job: set up (first time only), then the whole pipeline on a real MNIST subset with
# configs/main.yaml. Extra arguments go to `tdpdm run` (e.g. --mode released --epsilon 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh s3,ray
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"  # the embedded local Ray: no token auth on loopback
exec .venv/bin/tdpdm run --config configs/main.yaml "$@"
