"""`stage1.mechanism` selects the Lipschitz VAE in config and CLI, and refuses what it cannot
honestly do (private mode) with a one-line error before anything is read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tdpdm.cli import build_parser
from tdpdm.config import ConfigError, load_config
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.run_flags import run_overrides
from tdpdm.stages.plan import LIPSCHITZ_RELEASE, LIPSCHITZ_VAE, plan_run


def test_default_mechanism_is_the_dpsgd_autoencoder() -> None:
    assert load_config(None, {}).stage1.mechanism == "dpsgd-autoencoder"


def test_lipschitz_vae_selected_in_config(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("mode: released\nstage1:\n  mechanism: lipschitz-vae\n  latent_dim: 6\n")
    cfg = load_config(path)
    assert (cfg.stage1.mechanism, cfg.stage1.latent_dim) == ("lipschitz-vae", 6)


def test_private_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"lipschitz-vae .* needs mode: released"):
        load_config(None, {"stage1.mechanism": "lipschitz-vae", "mode": "private"})


def test_unknown_mechanism_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"stage1\.mechanism must be one of"):
        load_config(None, {"stage1.mechanism": "lipschitz", "mode": "released"})


def test_cli_flag_sets_the_mechanism() -> None:
    args = build_parser().parse_args(
        ["run", "--mode", "released", "--stage1-mechanism", "lipschitz-vae"]
    )
    cfg = load_config(None, run_overrides(args))
    assert cfg.stage1.mechanism == "lipschitz-vae"


def test_cli_refuses_private_lipschitz_in_one_line(tmp_path) -> None:
    ledger = tmp_path / "ledger.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdpdm.cli",
            "run",
            "--mode",
            "private",
            "--stage1-mechanism",
            "lipschitz-vae",
            "--ledger",
            str(ledger),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs mode: released" in lines[0]
    assert not ledger.exists()


def test_plan_names_the_lipschitz_mechanisms() -> None:
    cfg = load_config(
        None, {"stage1.mechanism": "lipschitz-vae", "mode": "released", "stage1.epochs": 1}
    )
    plan = plan_run(cfg, 5000, Adjacency.REPLACE_ONE, 1e-5)
    stages = [e.stage for e in plan.events()]
    assert stages == [LIPSCHITZ_VAE, LIPSCHITZ_RELEASE]
    assert plan.planned_epsilon() <= cfg.epsilon
