#!/usr/bin/env bash
# The whole test suite from a fresh machine: Python environment, browser, tools (helm, checkov,
# Prometheus), lint, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,s3,ray
if [ ! -x /usr/bin/chromium ]; then
  echo "test: installing Debian chromium (headless report checks)"
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq chromium >/dev/null
fi
bash scripts/setup_tools.sh
echo "test: ruff check"
.venv/bin/ruff check .
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
status=0
.venv/bin/python -m pytest -p no:cacheprovider --durations=40 "$@" || status=$?
if [ "$status" = 5 ]; then echo "test: pytest collected no tests"; fi
exit "$status"
