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
# Ray starts its workers at nice 15: beside a busy pytest worker on the same 2 cores they would
# starve (a Ray Train test then runs for many minutes). The tests run them at the default.
export RAY_worker_niceness="${RAY_worker_niceness:-0}"
# Two pytest workers, one per core (TDPDM_TEST_WORKERS=0: one process). Tests that must share a
# worker (a module, an expensive session fixture, a Ray group) are grouped in tests/conftest.py.
workers="${TDPDM_TEST_WORKERS:-2}"
parallel=()
if [ "$workers" != 0 ]; then parallel=(-n "$workers" --dist loadgroup); fi
status=0
.venv/bin/python -m pytest -p no:cacheprovider --durations=40 "${parallel[@]}" "$@" || status=$?
if [ "$status" = 5 ]; then echo "test: pytest collected no tests"; fi
exit "$status"
