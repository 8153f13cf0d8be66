"""tdpdm: differentially private synthetic images.

`tdpdm.Synthesizer` (tdpdm/api.py) is imported on first use, so that `import tdpdm` stays light
(no torch, no pipeline) for the CLI and the tools that only need `__version__`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["Synthesizer", "__version__"]


def __getattr__(name: str) -> Any:
    # The package's one reference upwards (tdpdm.api is on the top floor with the CLI): made at
    # attribute access, never at import, so no import circle can form through it.
    if name == "Synthesizer":
        return importlib.import_module("tdpdm.api").Synthesizer
    raise AttributeError(f"module 'tdpdm' has no attribute {name!r}")
