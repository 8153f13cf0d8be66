"""Where Ray is missing, `tdpdm run` with the main job's config (the Ray backend) stops with one
line saying what to do, leaving the ledger with nothing spent.

A file of its own, named to run before the tests/distributed files that use the session's
local Ray (`local_ray`): this test needs no Ray running (`no_ray_running`), and stopping the
shared one between its users would cost a restart (10-20 s).
"""

from __future__ import annotations

import sys

from train_support import main_job_args

from tdpdm.cli import main
from tdpdm.privacy.ledger import Ledger


def test_missing_ray_is_one_clear_line_and_spends_nothing(
    no_ray_running, tmp_path, monkeypatch, capsys
):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(main_job_args(tmp_path))
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code != 0 and err.startswith("tdpdm: error: Ray is not installed")
    assert "install the `ray` extra" in err and "distributed.backend: local" in err
    ledger = Ledger(str(tmp_path / "ledger.json"))
    assert ledger.charges("mnist") == []  # refused before reserving anything
