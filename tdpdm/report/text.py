"""Numbers as a person reads them in a guarantee."""

from __future__ import annotations

import math


def epsilon_text(epsilon: float) -> str:
    """Epsilon rounded *up* to 3 decimals: a printed guarantee must never look stronger."""
    return f"{math.ceil(epsilon * 1000 - 1e-9) / 1000:.3f}"
