#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtualenv in .venv with the CPU build of torch pinned
# *first* (an open range with no torch installed would pull a multi-GB CUDA build), then the
# package with version ranges and the extras asked for (default: dev,s3).
# With dev, also the reference FID code that one test reads (see the end).
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
# Reference code for tests/evaluate/test_eval_fid_reference.py (pins repeated in
# tests/evaluate/fid_reference.py): pytorch-fid and torchvision wheels unpacked without their
# dependencies into a folder that is never on sys.path, since PyPI's torchvision does not import
# beside the CPU torch. The test executes their inception source files, nothing else.
if [[ ",$extras," == *,dev,* ]]; then
  ref_dir=".venv/tdpdm-reference"
  ref_pins=("pytorch-fid==0.3.0" "torchvision==0.29.1")
  if [ ! -f "$ref_dir/.pins" ] || [ "$(cat "$ref_dir/.pins")" != "${ref_pins[*]}" ]; then
    echo "setup: unpacking the reference FID code (${ref_pins[*]}, --no-deps) into $ref_dir"
    rm -rf "$ref_dir"
    "${pip[@]}" install -q --no-deps --no-compile --target "$ref_dir" "${ref_pins[@]}"
    echo "${ref_pins[*]}" > "$ref_dir/.pins"
  fi
fi
