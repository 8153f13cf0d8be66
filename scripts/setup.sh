#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtualenv in .venv with the CPU build of torch pinned
# *first* (an open range with no torch installed would pull a multi-GB CUDA build), then the
# package with version ranges and the extras asked for (default: dev,s3).
# Usage: scripts/setup.sh [extras]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,s3}"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then py="$candidate"; break; fi
  done
fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch ${TDPDM_TORCH_VERSION:-2.13.0} (CPU build)"
  "${pip[@]}" install -q "torch==${TDPDM_TORCH_VERSION:-2.13.0}"
fi
stamp=".venv/.tdpdm-installed-${extras//,/-}"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing tdpdm[$extras] and its dependencies"
  "${pip[@]}" install -q -e ".[$extras]"
  echo "$want" > "$stamp"
fi
