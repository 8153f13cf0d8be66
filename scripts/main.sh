#!/usr/bin/env bash
# The main job: set up (first time only), then the whole pipeline on a real MNIST subset with
# configs/main.yaml. Extra arguments go to `tdpdm run` (e.g. --mode released --epsilon 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,s3
exec .venv/bin/tdpdm run --config configs/main.yaml "$@"
