"""`stage2.released_model: ambient-diffusion` (issue 14): a denoiser trained on a per-record
release through its known noise, conditioned on labels inferred jointly by the deconvolved
mixture. A plain denoiser on the same noisy latents learns the noise as if it were data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tdpdm_test_support import tiny_run_overrides

from tdpdm.config import Stage2Config, load_config
from tdpdm.models.ambient import AmbientDenoiser, ambient_loss
from tdpdm.models.diffusion import ddim_sample
from tdpdm.stages.ambient import inferred_labels
from tdpdm.stages.deconvolve import class_posteriors, fit_deconvolved_mixture
from tdpdm.stages.diffuse import train_diffusion
from tdpdm.stages.resample import load_stage2

NOISE = 0.5
CLEAN_SPREAD = 0.1


def _toy_release(n: int = 4000, d: int = 4, seed: int = 0):
    """Two classes at -0.5 / +0.5 on coordinate 0, clean spread 0.1, released with noise 0.5."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = CLEAN_SPREAD * rng.standard_normal((n, d))
    z[:, 0] += np.where(y == 1, 0.5, -0.5)
    return (z + NOISE * rng.standard_normal((n, d))).astype(np.float32), y


def _class_stats(samples: np.ndarray, labels: torch.Tensor, c: int):
    mine = samples[labels.numpy() == c]
    return mine.mean(axis=0), mine.std(axis=0)


def test_the_ambient_denoiser_draws_the_clean_classes_where_a_plain_one_draws_the_noise():
    torch.set_num_threads(1)
    x, y = _toy_release()
    cfg = Stage2Config(hidden=64, depth=2, epochs=30, batch_size=256, ema_decay=0.99)
    unit = float(x.std())
    common = dict(num_classes=2, plan=None, session=None, device="cpu", seed=0, progress=False)
    ambient = AmbientDenoiser(4, 2, 64, 2, noise_var=(NOISE / unit) ** 2, unit=unit)
    ambient = train_diffusion(x / unit, y, cfg, model=ambient, loss=ambient_loss, **common)
    plain = train_diffusion(x, y, cfg, **common)
    labels = torch.tensor([0] * 800 + [1] * 800)
    drawn = ambient.sample(
        labels, steps=40, guidance=0.0, generator=torch.Generator().manual_seed(1)
    )
    naive = ddim_sample(plain, labels, steps=40, guidance=0.0, generator=torch.Generator())
    for c, centre in ((0, -0.5), (1, 0.5)):
        mean, spread = _class_stats(drawn.numpy(), labels, c)
        assert mean[0] == pytest.approx(centre, abs=0.1)
        assert np.abs(mean[1:]).max() < 0.1
        assert spread.max() < 2 * CLEAN_SPREAD  # the clean spread, not the release's
        assert _class_stats(naive.numpy(), labels, c)[1].min() > 0.8 * NOISE  # learns the noise


def test_class_posteriors_read_the_latent_as_well_as_the_noisy_label():
    rng = np.random.default_rng(3)
    x, y = _toy_release(n=3000, seed=3)
    label_noise = 1.5  # the label part alone is right only about 2/3 of the time
    label_vectors = np.eye(2)[y] + label_noise * rng.standard_normal((len(y), 2))
    mixture = fit_deconvolved_mixture(
        x, label_vectors, noise_std=NOISE, label_noise_std=label_noise,
        components_per_class=1, iterations=150, seed=0, progress=False,
    )  # fmt: skip
    post = class_posteriors(mixture, x, label_vectors, noise_std=NOISE, label_noise_std=label_noise)
    assert post.shape == (len(y), 2)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-9)
    by_label = (label_vectors.argmax(axis=1) == y).mean()
    by_posterior = (post.argmax(axis=1) == y).mean()
    assert by_label < 0.75 and by_posterior > 0.8  # the latent carries the class too


def test_inferred_labels_are_draws_from_the_posteriors():
    certain = np.eye(3)[[0, 2, 1, 1]]
    assert inferred_labels(certain, seed=0).tolist() == [0, 2, 1, 1]
    even = np.full((30000, 2), 0.5)
    shares = np.bincount(inferred_labels(even, seed=0), minlength=2) / 30000
    np.testing.assert_allclose(shares, [0.5, 0.5], atol=0.02)  # a draw, not the arg-max
    assert (inferred_labels(even, seed=1) != inferred_labels(even, seed=0)).any()


def test_a_saved_ambient_denoiser_loads_back_with_its_noise_level(tmp_path):
    model = AmbientDenoiser(6, 3, 32, 2, noise_var=2.5, unit=0.7)
    torch.save(model.state_dict(), tmp_path / "stage2.pt")
    loaded = load_stage2(str(tmp_path / "stage2.pt"))
    assert isinstance(loaded, AmbientDenoiser)
    assert float(loaded.noise_var) == 2.5 and float(loaded.unit) == pytest.approx(0.7)
    labels = torch.tensor([0, 1, 2])
    a = model.eval().sample(labels, steps=5, guidance=1.0, generator=torch.Generator())
    b = loaded.eval().sample(labels, steps=5, guidance=1.0, generator=torch.Generator())
    torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_a_released_run_with_ambient_diffusion_spends_only_stage_1_and_samples_again(
    tmp_path, shared_datasets
):
    from tdpdm.pipeline import run_pipeline
    from tdpdm.stages.resample import PublishedRun

    overrides = tiny_run_overrides(
        tmp_path, shared_datasets, "released", subset=600, seed=0,
        settings={"stage2.released_model": "ambient-diffusion", "stage2.epochs": 2,
                  "evaluation.synthetic_count": 100},
    )  # fmt: skip
    cfg = load_config(None, overrides)
    report = run_pipeline(cfg, log=lambda m: None).report
    assert [e["stage"] for e in report["privacy"]["events"]] == ["encoder", "latent_release"]
    assert report["config"]["stage2"]["released_model"] == "ambient-diffusion"
    images, labels = PublishedRun.open(str(tmp_path / "out")).sample(20, seed=1)
    assert images.shape == (20, 28, 28) and sorted(set(labels.tolist())) == list(range(10))
