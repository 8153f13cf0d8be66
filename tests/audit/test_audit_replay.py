"""The replay adversary of issue 11: regenerate the mechanism noise from the published seed.

The attacker knows the published seed and the project's code. It guesses the mechanism keys from
the seed, regenerates the release noise and the secret row order, subtracts the noise from the
released rows and looks for each canary's clean encoding among them. Against the product (fresh
OS entropy per mechanism) it is at chance; with keys derived from the seed (the flaw, installed
by a test-only fixture) it finds every member exactly and refutes any claimed epsilon.

Fast tests replay a release built here without training; the `slow` test audits a real
`released`-mode run with seed-derived keys end to end (run pytest with -s to see its figures).
The replay against the product's fresh keys on a real run is scored on the run of
tests/audit/test_audit_released.py's real-noise audit (one training run, both attacks).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from audit_support import audit_overrides, seed_derived_key, summary

from tdpdm.audit.canaries import make_canaries
from tdpdm.audit.metrics import auc
from tdpdm.audit.run import canary_scores, run_audit
from tdpdm.audit.scoring import (
    SCORERS,
    ReplayScorer,
    RunArtifacts,
    nearest_released_latent,
    pre_issue_11_key,
    seed_as_key,
)
from tdpdm.config import load_config
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.ledger import Ledger
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.artifacts import RunLayout, save_model
from tdpdm.stages.encode import encode, new_autoencoder
from tdpdm.stages.latents_io import write_latents
from tdpdm.stages.release import release_latents

CANARIES = 200
CLAIMED = 2.0
SEED = 5


# --- fast: a release built here, replayed ----------------------------------------------------


class _Recorder:
    """Stands in for a PrivacySession: the release only records its event on it."""

    def record(self, event: Any) -> None:
        self.event = event


def _tiny_cfg(tmp_path: Path, mechanism: str):
    overrides: dict[str, Any] = {
        "mode": "released",
        "seed": SEED,
        "out": str(tmp_path / "run"),
        "ledger": str(tmp_path / "ledger.json"),
        "stage1.latent_dim": 8,
        "stage1.width": 8,
    }
    if mechanism == "lipschitz-vae":
        overrides |= {"stage1.mechanism": mechanism, "stage1.vae_hidden": 16}
    return load_config(None, overrides)


def _publish_release(cfg, images: np.ndarray, labels: np.ndarray) -> None:
    """What stage 1 (`stages/stage1_mechanisms.py`) publishes in released mode, without
    training: the (untrained, public) stage-1 model, the per-record release of `images` with a
    key from `MechanismKey.fresh`, and the latents file shuffled by a fresh "latents-order"
    key."""
    layout = RunLayout(cfg.out)
    event = GaussianEvent(noise_multiplier=3.0, stage="release")
    if cfg.stage1.mechanism == "lipschitz-vae":
        from tdpdm.stages import lipschitz_release as lr

        model = lr.make_vae(cfg.stage1.latent_dim, cfg.stage1.vae_hidden, 1.0)
        model.project_weights()
        released = lr.release(
            model,
            images,
            labels,
            num_classes=10,
            label_scale=cfg.release.label_scale,
            event=event,
            session=_Recorder(),
            seed=cfg.seed,
            key=MechanismKey.fresh("lipschitz-release"),
        )
        info = released.info()
    else:
        model = new_autoencoder(cfg.stage1, cfg.seed)
        released = release_latents(
            encode(model, images, "cpu"),
            labels,
            num_classes=10,
            cfg=cfg.release,
            event=event,
            session=_Recorder(),
            key=MechanismKey.fresh("release"),
        )
        info = {"kind": "dp_release", **released.metadata()}
    save_model(model, layout.autoencoder)
    write_latents(
        layout.latents("released"),
        released.latents,
        released.labels,
        info | {"sensitive": False},
        seed=MechanismKey.fresh("latents-order").numpy(),
        label_vectors=released.label_vectors,
    )


def _replay(tmp_path: Path, mechanism: str, scorer: ReplayScorer):
    cfg = _tiny_cfg(tmp_path, mechanism)
    design = make_canaries(60, Adjacency.REPLACE_ONE, seed=SEED)
    _publish_release(cfg, *design.inserted())
    art = RunArtifacts(cfg, cfg.out)
    raw = scorer(art, design.candidates, design.labels)
    return design, art, raw


@pytest.mark.parametrize("mechanism", ["dpsgd-autoencoder", "lipschitz-vae"])
def test_replay_finds_every_member_when_keys_come_from_the_seed(
    tmp_path: Path, mechanism: str, seed_derived_mechanism_keys, one_torch_thread
):
    seed_derived_mechanism_keys(SEED)
    scorer = ReplayScorer(seed_derived_key())
    design, art, raw = _replay(tmp_path, mechanism, scorer)
    assert scorer.details["rows_matched"] == 1.0  # every row's noise regenerated
    members = np.where(design.included, np.arange(design.m), design.m + np.arange(design.m))
    assert np.all(raw[members] > -1e-3)  # a member's de-noised row *is* its encoding
    assert auc(canary_scores(design, raw), design.included) == 1.0
    if mechanism == "dpsgd-autoencoder":  # the same release, attacked without the replay
        plain = canary_scores(
            design, nearest_released_latent(art, design.candidates, design.labels)
        )
        assert auc(plain, design.included) < 0.9


@pytest.mark.parametrize("mechanism", ["dpsgd-autoencoder", "lipschitz-vae"])
def test_replay_regenerates_nothing_from_fresh_keys(
    tmp_path: Path, mechanism: str, one_torch_thread
):
    scorer = ReplayScorer(seed_derived_key())
    design, _, raw = _replay(tmp_path, mechanism, scorer)
    assert scorer.details["rows_matched"] == 0.0
    members = np.where(design.included, np.arange(design.m), design.m + np.arange(design.m))
    assert np.all(raw[members] < -0.1)  # no member found exactly


def test_default_derivations_replay_the_code_before_issue_11():
    """The registered `replay` guesses keys the way the code before issue 11 drew its noise:
    `SeedSequence([seed, tag])` for the release, `default_rng(seed)` for the row order."""
    assert SCORERS["replay"].derivations == (pre_issue_11_key, seed_as_key)
    for seed in (0, SEED, 2**40 + 3):
        for purpose, tag in (("release", 0x7E1EA5E), ("lipschitz-release", 0x11F5C17)):
            old = np.random.default_rng(np.random.SeedSequence([seed, tag])).normal(size=8)
            new = MechanismKey(purpose, pre_issue_11_key(seed, purpose)).numpy().normal(size=8)
            np.testing.assert_array_equal(new, old)
        old_order = np.random.default_rng(seed).permutation(50)
        new_order = MechanismKey("latents-order", pre_issue_11_key(seed, "latents-order"))
        np.testing.assert_array_equal(new_order.numpy().permutation(50), old_order)


def test_replay_refuses_private_mode_before_anything_is_charged(tmp_path: Path):
    cfg = load_config(
        None,
        {"mode": "private", "out": str(tmp_path / "audit"), "ledger": str(tmp_path / "l.json")},
    )
    with pytest.raises(ValueError, match="private mode trains stage 2 with DP-SGD"):
        run_audit(cfg, canaries=10, scorer="replay", log=lambda m: None)
    assert Ledger(cfg.ledger).budget(cfg.dataset) is None
    assert not (tmp_path / "audit").exists()


def test_scorers_never_read_the_custodian_part(tmp_path: Path):
    """Private latents sit in custodian/: the artefacts a scorer gets cannot reach them."""
    cfg = _tiny_cfg(tmp_path, "dpsgd-autoencoder")
    layout = RunLayout(cfg.out)
    z = np.zeros((4, 8), dtype=np.float32)
    write_latents(layout.custodian("latents", "latents.parquet"), z, np.zeros(4, int), {}, seed=0)
    with pytest.raises(ValueError, match="published no latents"):
        _ = RunArtifacts(cfg, cfg.out).released_latents


# --- slow: audits of real released-mode runs ---------------------------------------------------


def _replay_audit(tmp_path: Path, data_dir: Path):
    cfg = load_config(None, audit_overrides(tmp_path, data_dir, "released", CLAIMED))
    assert cfg.seed == SEED
    started = time.perf_counter()
    result = run_audit(
        cfg,
        canaries=CANARIES,
        confidence=0.95,
        scorer=ReplayScorer(seed_derived_key()),
        log=lambda m: None,
    )
    return result, time.perf_counter() - started


@pytest.mark.slow
def test_replay_audit_refutes_the_claim_when_keys_come_from_the_seed(
    tmp_path: Path, shared_datasets: Path, seed_derived_mechanism_keys, one_torch_thread
):
    """The flaw of issue 11 (keys derived from the published seed), installed in this process
    only: the replay regenerates the release noise and the row order, and every member's
    de-noised row is its clean encoding."""
    seed_derived_mechanism_keys(SEED)
    result, seconds = _replay_audit(tmp_path, shared_datasets)
    a = result.audit
    assert a["scorer"]["details"]["rows_matched"] == 1.0
    assert result.claimed == pytest.approx(CLAIMED, abs=0.05)
    assert a["attack"]["auc"] == 1.0
    assert result.lower_bound > result.claimed, a["bound"]
    assert a["verdict"].startswith("REFUTED")
    print(summary(f"replay vs seed-derived keys ({seconds:.0f} s)", a))
