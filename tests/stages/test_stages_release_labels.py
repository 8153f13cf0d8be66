"""`released` mode keeps every record's label with its latent, from the release to the samples.

The label rides inside the release as a noisy one-hot part; stage 2 reads the published Parquet
file (rows shuffled) and fits class-conditional components through the noise. A permutation
anywhere on that path (a column reordered without the others, a component given to the wrong
class, a sign or scale error in the label likelihood) leaves every shape intact and shows only
as synthetic images of one class labelled as another (issue 14). These tests follow labels on
toy data whose classes are known: with the noise switched off (in this process, test-only),
rows must come back exactly; with release noise, the class means fitted through it must land
at the right labels, for both release mechanisms and with several components per class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tdpdm_test_support import torch_threads

from tdpdm.config import ReleaseConfig, Stage2Config
from tdpdm.models.lipschitz_vae import IMAGE_SIDE, LipschitzVAE
from tdpdm.privacy.events import GaussianEvent
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages import lipschitz_release
from tdpdm.stages import release as latent_release
from tdpdm.stages.deconvolve import fit_release_model
from tdpdm.stages.encode import images_to_tensor
from tdpdm.stages.latents_io import read_label_vectors, read_latents, write_latents


class _Recorder:
    """Stands in for the privacy session: the release records its event once."""

    def __init__(self) -> None:
        self.events: list = []

    def record(self, event) -> None:
        self.events.append(event)


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _no_noise(key, shape, std):
    return np.zeros(shape)


# -- the two release mechanisms on toy data --------------------------------------------------


def _autoencoder_release(z, y, classes, *, sigma, label_scale):
    """`released` mode's release of tanh-range latents z: (latents, labels, label vectors,
    the file metadata stage 2 reads)."""
    out = latent_release.release_latents(
        z,
        y,
        num_classes=classes,
        cfg=ReleaseConfig(clip_norm=1.0, label_scale=label_scale),
        event=GaussianEvent(noise_multiplier=sigma, stage="latent_release"),
        session=_Recorder(),
        key=MechanismKey("release", 14),
    )
    return out.latents, out.labels, out.label_vectors, out.metadata()


def _band_images(y: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class c: a bright horizontal band at its own height, with a little pixel noise."""
    rows = IMAGE_SIDE // classes
    images = rng.uniform(0, 40, size=(len(y), IMAGE_SIDE, IMAGE_SIDE))
    for c in range(classes):
        images[y == c, c * rows : (c + 1) * rows, :] += 200
    return images.clip(0, 255).astype(np.uint8)


def _band_encoder(classes: int) -> LipschitzVAE:
    """A bounded encoder that reads the bands: mu(x)_c = the band-c pixels' sum over their
    count's square root. Every layer has spectral norm exactly 1 (orthonormal rows, identity),
    as after training with the projection; inputs are non-negative, so MaxMin passes them on."""
    model = LipschitzVAE(latent_dim=classes, hidden=16)
    first, middle, last = model.lipschitz_layers()
    rows = IMAGE_SIDE // classes
    with torch.no_grad():
        for layer in (first, middle, last):
            layer.weight.zero_()
            layer.bias.zero_()
        for c in range(classes):
            band = torch.zeros(IMAGE_SIDE, IMAGE_SIDE)
            band[c * rows : (c + 1) * rows] = 1.0
            first.weight[c] = band.flatten() / band.sum().sqrt()
        middle.weight.copy_(torch.eye(16))
        last.weight[:, :classes] = torch.eye(classes)
    return model


def _lipschitz_release(images, y, classes, *, sigma, label_scale):
    """The Lipschitz-VAE release of `images`, and the clean latents w = (mu(x) - mu(c)) / 14
    it releases noisily."""
    model = _band_encoder(classes)
    out = lipschitz_release.release(
        model,
        images,
        y,
        num_classes=classes,
        label_scale=label_scale,
        event=GaussianEvent(noise_multiplier=sigma, stage="lipschitz_release"),
        session=_Recorder(),
        seed=0,
        key=MechanismKey("lipschitz-release", 14),
    )
    with torch.no_grad():
        clean = model.encode(images_to_tensor(images)).double().numpy()
    return (out.latents, out.labels, out.label_vectors, out.info()), clean


def _published(tmp_path, released) -> str:
    """Write the release as the pipeline does (rows in a secret shuffled order)."""
    latents, labels, label_vectors, meta = released
    uri = str(tmp_path / "latents.parquet")
    write_latents(
        uri, latents, labels, meta, seed=np.random.default_rng(99), label_vectors=label_vectors
    )
    return uri


# -- rows: noise off -------------------------------------------------------------------------


def test_released_rows_keep_latent_and_label_together(tmp_path, monkeypatch) -> None:
    """Noise off: every row read back from the file pairs a record's latent with its own
    label vector and label, although the rows were shuffled on the way."""
    monkeypatch.setattr(latent_release, "release_noise", _no_noise)
    rng = np.random.default_rng(0)
    classes, n = 10, 500
    y = rng.integers(0, classes, n)
    z = rng.uniform(-1, 1, size=(n, 4))
    z[:, 0] = (y - 4.5) / 5  # the label, written into the latent itself
    uri = _published(tmp_path, _autoencoder_release(z, y, classes, sigma=1.0, label_scale=0.6))

    latents, labels, _ = read_latents(uri, classes)
    label_vectors = read_label_vectors(uri)
    assert not np.array_equal(labels, y)  # the rows really were shuffled
    from_latent = np.rint(latents[:, 0] * 5 + 4.5).astype(int)
    np.testing.assert_array_equal(from_latent, labels)
    np.testing.assert_allclose(label_vectors, np.eye(classes)[labels], atol=1e-5)


# -- class means: release noise on -----------------------------------------------------------

CLASSES = 4
MEANS = np.array(
    [[0.5, 0.5, -0.4], [-0.5, 0.4, 0.5], [0.4, -0.5, 0.5], [-0.4, -0.5, -0.5]]
)  # clean class means of the toy latents (tanh range)


def _assert_class_means_land_at_their_labels(uri, clean, y, *, tolerance) -> None:
    """Fit stage 2 on the published file (two components per class) and sample every label:
    the sampled class means must sit at the clean class means of the same labels."""
    mix = fit_release_model(
        uri,
        Stage2Config(mixture_components=2, mixture_iterations=120),
        seed=0,
        progress=False,
    )
    truth = np.stack([clean[y == c].mean(0) for c in range(CLASSES)])
    labels = torch.arange(4000) % CLASSES
    samples = mix.sample(labels, torch.Generator().manual_seed(0)).double().numpy()
    fitted = np.stack([samples[labels.numpy() == c].mean(0) for c in range(CLASSES)])
    distance = np.linalg.norm(fitted[:, None] - truth[None], axis=2)  # fitted class x true class
    assert distance.argmin(axis=1).tolist() == list(range(CLASSES)), distance.round(3)
    assert distance.diagonal().max() < tolerance, distance.round(3)


def test_class_means_fitted_through_release_noise_land_at_their_labels(tmp_path) -> None:
    """Autoencoder release: latent noise std 0.54 (the clean class means are 1.3 to 1.4
    apart), label noise std 1.0, so a record's noisy arg-max label is right about half the
    time."""
    rng = np.random.default_rng(1)
    n = 6000
    y = rng.integers(0, CLASSES, n)
    z = (MEANS[y] + 0.1 * rng.normal(size=(n, 3))).clip(-1, 1)
    released = _autoencoder_release(z, y, CLASSES, sigma=0.3, label_scale=0.3)
    _, labels, _, meta = released
    assert meta["noise_std_per_coordinate"] == pytest.approx(0.3 * np.sqrt(3) / np.sqrt(0.91))
    assert meta["label_noise_std_per_coordinate"] == pytest.approx(1.0)
    assert 0.35 < (labels == y).mean() < 0.65  # per-record labels are weak
    _assert_class_means_land_at_their_labels(_published(tmp_path, released), z, y, tolerance=0.15)


def test_lipschitz_release_class_means_land_at_their_labels(tmp_path) -> None:
    """The Lipschitz-VAE release (latents rescaled by 14 and re-centred, label part divided by
    its length b) of toy images whose class is the height of a bright band: latent noise std
    0.47 with the clean class means about 1 apart, label noise std 0.44."""
    rng = np.random.default_rng(2)
    n = 4000
    y = rng.integers(0, CLASSES, n)
    released, clean = _lipschitz_release(
        _band_images(y, CLASSES, rng), y, CLASSES, sigma=0.375, label_scale=0.6
    )
    meta = released[3]
    assert meta["noise_std_per_coordinate"] == pytest.approx(0.375 * 35 / 2 / 14, rel=1e-3)
    assert meta["label_noise_std_per_coordinate"] == pytest.approx(0.375 * 35 / 2 / 14.85, rel=1e-2)
    truth = np.stack([clean[y == c].mean(0) for c in range(CLASSES)])
    apart = np.linalg.norm(truth[:, None] - truth[None], axis=2) + 9 * np.eye(CLASSES)
    assert apart.min() > 1.0  # the band encoder separates the classes
    _assert_class_means_land_at_their_labels(
        _published(tmp_path, released), clean, y, tolerance=0.15
    )
