"""tdpdm's Inception FID against the reference code, on the same weights and the same images.

Reference: pytorch-fid 0.3.0 (`pytorch_fid/inception.py`: InceptionV3 built by
`fid_inception_v3()` with its FIDInceptionA/C/E_1/E_2 blocks, bilinear resize to 299 with
align_corners=False, scaling to [-1, 1]; `pytorch_fid/fid_score.py`:
`calculate_frechet_distance`) on torchvision 0.29.1's `models/inception.py` (Inception3,
InceptionB/D, BasicConv2d). These are the unmodified files from the wheels that scripts/setup.sh
puts in `.venv/tdpdm-reference`; fid_reference.py says how they load without torchvision's
compiled part. No real weights can be had here, so both networks get one weights file in the
layout of pt_inception-2015-12-05-6726825d.pth with every tensor random (batch-norm statistics
and affine parameters included), which the reference loads with `load_state_dict(strict=True)`.

Recorded one-off checks (not run in CI: they need torch 2.14.1 + torchvision 0.29.1, 5.5 GB),
with the real packages imported normally:
  - this module's weights and images: the stand-in-loaded reference, the normally imported
    pytorch-fid InceptionV3 and tdpdm gave bit-identical pool3 features (max |diff| 0.0); the
    unpatched Inception3 and calculate_frechet_distance matched their real counterparts to 0.0.
  - He-init convs with default batch-norm, 24 + 24 MNIST test digits: tdpdm's features equal
    pytorch-fid's bit for bit (max |diff| 0.0, features up to 4.0), also through pytorch-fid's
    own PNG loader (`get_activations`); FID 1.5231633393537 from either feature set, and
    pytorch-fid's `calculate_frechet_distance` on its own (singular, n < 2048) statistics
    1.5231560723: a 4.8e-6 relative gap from its sqrtm of a rank-deficient product, which tdpdm
    replaces with an exact low-rank identity; torchvision's unpatched Inception3 on the same
    weights differed by up to 1.52.
"""

from __future__ import annotations

import importlib.metadata
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fid_reference import PYTORCH_FID_VERSION, load_reference, require_reference

from tdpdm.evaluate.frechet import frechet_distance
from tdpdm.evaluate.inception_fid import (
    INPUT_SIZE,
    WEIGHTS_FILENAME,
    FIDInceptionV3,
    file_sha256,
    inception_features,
    load_fid_inception,
)


def _random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor random: He-normal convs keep pool3 features O(1) through ~90 layers, and
    non-trivial batch-norm statistics catch a swapped mean/var or weight/bias."""
    gen = torch.Generator().manual_seed(seed)
    state = FIDInceptionV3().state_dict()
    for key, t in state.items():
        if key.endswith("conv.weight"):
            fan_in = t[0].numel()
            state[key] = torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith(("bn.weight", "bn.running_var")):
            state[key] = torch.empty(t.shape).uniform_(0.6, 1.6, generator=gen)
        elif key.endswith(("bn.bias", "bn.running_mean")):
            state[key] = torch.randn(t.shape, generator=gen) * 0.2
        elif key.startswith("fc."):
            state[key] = torch.randn(t.shape, generator=gen) * 0.02
    return state


def _images(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """Digit-like uint8 grey images: blurred blobs with hard edges, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w))
    for i in range(n):
        for _ in range(3):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(h, w) / 3)
            out[i] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    out = np.clip(out * 255 + rng.normal(0, 20, out.shape), 0, 255)
    return out.astype(np.uint8)


@pytest.fixture(scope="module")
def fid_case(tmp_path_factory):
    require_reference()  # skip (fail under CI) before any work
    path = tmp_path_factory.mktemp("fid-reference") / "pt_inception-random.pth"
    torch.save(_random_weights(), path)
    requested: list[str] = []

    def load_state_dict_from_url(url: str, progress: bool = True) -> dict:
        requested.append(url)
        return torch.load(path, map_location="cpu", weights_only=True)

    with load_reference() as ref:
        assert ref.inception.__name__ == "pytorch_fid.inception"
        # fid_inception_v3() fetches through this module-level name: nothing is downloaded.
        ref.inception.load_state_dict_from_url = load_state_dict_from_url
        reference = ref.inception.InceptionV3().eval()  # default: block 3, 2048-d pool3
        plain = ref.torchvision_inception.inception_v3(
            weights=None, aux_logits=False, num_classes=1008, init_weights=False
        )
    plain.load_state_dict(torch.load(path, weights_only=True))
    plain.fc = torch.nn.Identity()  # its forward then ends at pool3 (dropout is off in eval)
    ours = load_fid_inception(path, file_sha256(path), "cpu")
    return {
        "ref": ref,
        "path": path,
        "requested": requested,
        "reference": reference,
        "plain": plain.eval(),
        "ours": ours,
        "a": _images(1, 3, 28, 28),  # MNIST size: upsampled to 299
        "b": _images(2, 2, 40, 24),  # another, non-square size
    }


@torch.no_grad()
def _reference_features(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """pytorch-fid's input: PIL grey -> convert('RGB') -> ToTensor, i.e. x / 255 on 3 channels."""
    x = torch.from_numpy(images).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    (pool3,) = model(x)
    return pool3.flatten(1).double().numpy()


def test_reference_is_the_pinned_release_and_loads_our_layout_strictly(fid_case):
    # fid_inception_v3() ran load_state_dict(strict=True) on the file tdpdm also loads strictly:
    # same keys both ways, same shapes.
    assert fid_case["ref"].inception.FID_WEIGHTS_URL.endswith("/" + WEIGHTS_FILENAME)
    assert fid_case["requested"] == [fid_case["ref"].inception.FID_WEIGHTS_URL]
    dists = importlib.metadata.distributions(path=[str(fid_case["ref"].root)])
    assert PYTORCH_FID_VERSION in {d.version for d in dists if d.metadata["Name"] == "pytorch-fid"}


def test_pool3_features_and_fid_equal_the_reference(fid_case):
    ours, reference = fid_case["ours"], fid_case["reference"]
    feats, refs = {}, {}
    for name in ("a", "b"):
        feats[name] = inception_features(ours, fid_case[name], "cpu")
        refs[name] = _reference_features(reference, fid_case[name])
        scale = np.abs(refs[name]).max()
        assert 0.1 < scale < 1e4, scale  # the random network carries signal to pool3
        diff = np.abs(feats[name] - refs[name]).max()
        assert diff <= 1e-6 * scale, f"set {name}: max |diff| {diff} (features up to {scale})"
    fid_ours = frechet_distance(feats["a"], feats["b"])
    fid_ref = frechet_distance(refs["a"], refs["b"])
    assert fid_ours > 1.0
    assert fid_ours == pytest.approx(fid_ref, rel=1e-6, abs=1e-9)


@torch.no_grad()
def test_the_comparison_would_catch_a_network_without_the_fid_patches(fid_case):
    """torchvision's own blocks (padded zeros in the average pools, average instead of max pool
    in Mixed_7c) on the same weights and inputs are far outside the tolerance above."""
    images = fid_case["a"][:1]
    x = torch.from_numpy(images).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    unpatched = fid_case["plain"](2 * x - 1).double().numpy()
    reference = _reference_features(fid_case["reference"], images)
    assert np.abs(unpatched - reference).max() > 1e-2 * np.abs(reference).max()


def _frechet_reference(fid_score, a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's statistics (mean, np.cov rowvar=False) and formula."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's deprecation of sqrtm's `disp`
        return float(
            fid_score.calculate_frechet_distance(
                a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
            )
        )


@pytest.mark.parametrize(
    ("dim", "n_a", "n_b", "rel"),
    [
        # n >= d: both take scipy's sqrtm of the covariance product (seen: ~1e-13 relative)
        (16, 40, 50, 1e-10),
        (64, 600, 700, 1e-10),
        (100, 150, 130, 1e-10),
        # n < d: tdpdm's exact low-rank identity vs pytorch-fid's sqrtm of a singular product,
        # which is only approximately right (seen: 1e-13 to 6e-8 relative)
        (64, 63, 64, 1e-6),
        (64, 20, 30, 1e-6),
        (128, 30, 40, 1e-6),
    ],
)
def test_frechet_distance_equals_pytorch_fid(fid_case, dim, n_a, n_b, rel):
    rng = np.random.default_rng(dim + n_a)
    mix = rng.normal(size=(dim, dim))
    a = rng.normal(size=(n_a, dim)) @ mix
    b = rng.normal(0.2, 1.3, size=(n_b, dim)) @ mix
    expected = _frechet_reference(fid_case["ref"].fid_score, a, b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=rel)
