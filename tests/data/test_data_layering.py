"""The data layer is the bottom floor: it must not import other tdpdm subpackages."""

from __future__ import annotations

import ast
from pathlib import Path

import tdpdm.data

DATA_DIR = Path(tdpdm.data.__file__).parent


def test_data_imports_nothing_above_it():
    offenders = []
    for path in sorted(DATA_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            for name in names:
                if name.startswith("tdpdm") and not name.startswith("tdpdm.data"):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
