"""The package's floors (developers' brief): imports point down, never up, and nothing imports
in a circle. Bottom: data, models, config, telemetry, report; then privacy, evaluate; then
stages; then pipeline and distributed; on top cli, api (`tdpdm.Synthesizer`), audit and the
jobs/ entrypoints.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import tdpdm

PACKAGE = Path(tdpdm.__file__).parent
FLOORS = {
    "__init__": 0,
    "data": 0,
    "models": 0,
    "config": 0,
    "config_errors": 0,
    "choices": 0,
    "telemetry": 0,
    "report": 0,
    "privacy": 1,
    "evaluate": 1,
    "stages": 2,
    "pipeline": 3,
    "distributed": 3,
    "audit": 4,
    "cli": 4,
    "run_flags": 4,
    "api": 4,
}
MAX_LINES = 450
"""A module longer than this does more than one job (the brief: ~400)."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The tdpdm modules `path` imports: `from pkg import sub` counts as `pkg.sub` when `sub`
    is a module, else as `pkg` (a name its `__init__` defines)."""
    modules = _modules()
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {n for n in found if n in modules}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_floor():
    units = {_unit(m) for m in _modules()}
    assert units <= set(FLOORS), f"units without a floor: {sorted(units - set(FLOORS))}"


def test_imports_never_point_up():
    upward = []
    for module, path in _modules().items():
        here = FLOORS[_unit(module)]
        for target in _imports(path, top_level_only=False):
            if FLOORS[_unit(target)] > here:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_circle():
    """Between modules (top-level imports: what runs at import time) and between units."""
    modules = _modules()
    graph = {
        m: {t for t in _imports(p, top_level_only=True) if t in modules and t != m}
        for m, p in modules.items()
    }
    units = {}
    for m, targets in graph.items():
        units.setdefault(_unit(m), set()).update(_unit(t) for t in targets if _unit(t) != _unit(m))
    for name, g in (("module", graph), ("unit", units)):
        try:
            tuple(TopologicalSorter(g).static_order())
        except CycleError as err:
            raise AssertionError(f"{name} import circle: {err.args[1]}") from None


def test_no_module_does_too_many_jobs():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
