"""A run whose plan does not fit the budget is refused before it reads a single record."""

from __future__ import annotations

from pathlib import Path

import pytest
from tdpdm_test_support import tiny_run_overrides

import tdpdm.data.sources as sources
from tdpdm.config import load_config
from tdpdm.pipeline import run_pipeline
from tdpdm.privacy.ledger import BudgetExceededError, Ledger

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_over_budget_plan_refused_before_any_read(
    tmp_path: Path,
    shared_datasets: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = load_config(None, tiny_run_overrides(tmp_path, shared_datasets, "private"))
    Ledger(cfg.ledger).set_budget("mnist", 0.5, 1e-5, "add_remove")
    before = Path(cfg.ledger).read_bytes()

    reads: list[tuple] = []
    real = sources.load_split

    def recording(*args, **kwargs):
        reads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "load_split", recording)
    logged: list[str] = []
    with pytest.raises(BudgetExceededError) as info:
        run_pipeline(cfg, log=logged.append)
    message = str(info.value)
    assert "epsilon=0.5" in message and "mnist" in message  # the budget
    assert "encoder:" in message and "diffusion:" in message  # the plan
    assert "no record was read" in message
    assert reads == []
    assert Path(cfg.ledger).read_bytes() == before
    assert not (tmp_path / "out").exists()  # neither part: nothing was written
    assert Ledger(cfg.ledger).charges("mnist") == []
