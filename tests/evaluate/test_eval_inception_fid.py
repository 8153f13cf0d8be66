import numpy as np
import pytest
import torch

from tdpdm.evaluate.inception_fid import (
    FIDInceptionV3,
    inception_features,
    inception_fid,
    load_fid_inception,
)

# Names as built by pytorch-fid's fid_inception_v3() (torchvision Inception3, num_classes=1008,
# aux_logits=False, Mixed_5b..7c replaced by FIDInceptionA/C/E_1/E_2), read from its source.
PYTORCH_FID_KEYS = [
    "Conv2d_1a_3x3.conv.weight",
    "Conv2d_1a_3x3.bn.running_var",
    "Conv2d_4a_3x3.bn.num_batches_tracked",
    "Mixed_5b.branch5x5_2.conv.weight",
    "Mixed_6a.branch3x3.conv.weight",
    "Mixed_6e.branch7x7dbl_5.bn.running_mean",
    "Mixed_7a.branch7x7x3_4.conv.weight",
    "Mixed_7b.branch3x3dbl_3b.bn.weight",
    "Mixed_7c.branch_pool.conv.weight",
    "fc.weight",
    "fc.bias",
]
# 94 BasicConv2d x (conv.weight + 5 BatchNorm entries) + fc.weight + fc.bias
EXPECTED_KEYS = 94 * 6 + 2
# torchvision inception_v3: 27,161,264; minus the aux head (3,326,696); plus 8 more fc classes
EXPECTED_PARAMS = 27_161_264 - 3_326_696 + 8 * 2048 + 8


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist["test_images"][:2], mnist["test_images"][2:4]


def test_state_dict_keys_match_pytorch_fid():
    model = FIDInceptionV3()
    state = model.state_dict()
    assert len(state) == EXPECTED_KEYS
    for key in PYTORCH_FID_KEYS:
        assert key in state, key
    assert not any(k.startswith("AuxLogits") for k in state)
    assert state["fc.weight"].shape == (1008, 2048)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert model.Conv2d_1a_3x3.bn.eps == 1e-3
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS


def test_load_by_path_with_sha256(random_inception_file, digits):
    path, sha = random_inception_file
    model = load_fid_inception(path, sha.upper(), "cpu")
    reference = FIDInceptionV3()
    reference.load_state_dict(torch.load(path, weights_only=True))
    feats = inception_features(model, digits[0], "cpu")
    assert feats.shape == (2, 2048)
    assert np.allclose(feats, inception_features(reference, digits[0], "cpu"))


def test_sha_mismatch_raises(random_inception_file):
    path, _ = random_inception_file
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_fid_inception(path, "0" * 64, "cpu")


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        load_fid_inception(tmp_path / "absent.pth", None, "cpu")


def test_wrong_state_dict_raises_one_line(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a pytorch-fid Inception state dict") as info:
        load_fid_inception(path, None, "cpu")
    assert "\n" not in str(info.value)


def test_fid_of_set_with_itself_is_zero_and_positive_otherwise(random_inception_file, digits):
    path, sha = random_inception_file
    same = inception_fid(
        digits[0], digits[0], weights_path=str(path), expected_sha256=sha, device="cpu"
    )
    assert abs(same) < 1e-6
    blank = np.zeros_like(digits[1])
    different = inception_fid(
        digits[0], blank, weights_path=str(path), expected_sha256=None, device="cpu"
    )
    assert different > 1.0


def test_features_reject_non_uint8(random_inception_file):
    model = load_fid_inception(random_inception_file[0], None, "cpu")
    with pytest.raises(ValueError, match="uint8"):
        inception_features(model, np.zeros((2, 28, 28), np.float32), "cpu")
