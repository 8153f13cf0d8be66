"""A disk cache of calibrated noise multipliers, so repeated plans skip the root-finding.

Calibration is a pure function of the event templates, the target, delta, the adjacency and the
tolerance, but it costs dozens of accountant evaluations (minutes for small data sets with many
steps). A cached value is never trusted on its own: `calibrate_noise` re-checks it with the
reporting accountant before use, so a stale, corrupt or tampered entry can cost time, never
privacy. Set `TDPDM_CALIBRATION_CACHE` to a file path, or to `off` to disable the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tdpdm.data import storage
from tdpdm.privacy.events import Event, event_to_dict

CACHE_FORMAT = 1
MAX_ENTRIES = 2000
"""Oldest entries are dropped past this: the file stays small."""


def cache_path() -> Path | None:
    setting = os.environ.get("TDPDM_CALIBRATION_CACHE", "")
    if setting.lower() in ("off", "0", "false", "none"):
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tdpdm" / "calibration.json"


def cache_key(
    fixed: Sequence[Event],
    probes: Sequence[Sequence[Event]],
    target_epsilon: float,
    delta: float,
    adjacency: str,
    rel_tol: float,
) -> str:
    """Identifies a calibration problem: the fixed events and the templates at probe sigmas."""
    spec = {
        "format": CACHE_FORMAT,
        "fixed": [event_to_dict(e) for e in fixed],
        "probes": [[event_to_dict(e) for e in p] for p in probes],
        "target_epsilon": repr(float(target_epsilon)),
        "delta": repr(float(delta)),
        "adjacency": adjacency,
        "rel_tol": repr(float(rel_tol)),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def lookup(key: str) -> float | None:
    path = cache_path()
    if path is None:
        return None
    value = _load(path).get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def store(key: str, sigma: float) -> None:
    """Best effort: a cache that cannot be written is skipped silently."""
    path = cache_path()
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _load(path)
        entries.pop(key, None)
        entries[key] = float(sigma)
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        data = json.dumps({"format": CACHE_FORMAT, "entries": entries}).encode()
        storage.write_bytes_atomic(str(path), data, private=True)
