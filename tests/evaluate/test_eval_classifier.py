import numpy as np
import pytest
import torch

from tdpdm.models.classifier import DPDMClassifier, to_model_input

# conv 1->32, 32->64, 64->128 (3x3 + bias), fc 1152->128, 128->10
EXPECTED_PARAMS = (9 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * 9 * 128 + 128) + (1152 * 128 + 128)
EXPECTED_PARAMS += 128 * 10 + 10


def test_flattened_size_is_1152_and_parameter_count():
    model = DPDMClassifier()
    assert model.flat(torch.zeros(2, 1, 28, 28)).shape == (2, 1152)
    assert model.fc1.in_features == 1152
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS == 241_546


def test_logits_and_features_shapes():
    model = DPDMClassifier().eval()
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    feats = model.features(x)
    assert feats.shape == (5, 128)
    assert (feats >= 0).all()  # post-ReLU activations
    assert torch.allclose(model.fc2(feats), model(x))


def test_dropout_only_in_training_mode():
    model = DPDMClassifier()
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))


def test_to_model_input_scales_uint8_to_unit_interval():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x = to_model_input(images, "cpu")
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4]))
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(images.astype(np.float32), "cpu")


def test_other_sizes_and_rgb_keep_the_layers() -> None:
    """Your own data (issue 15): RGB 32x32 through the same three conv layers."""
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    model = DPDMClassifier(num_classes=4, in_channels=3, image_size=32).eval()
    x = to_model_input(images, "cpu")
    assert x.shape == (2, 3, 32, 32)
    assert model(x).shape == (2, 4) and model.fc1.in_features == 128 * 4 * 4
    assert DPDMClassifier().fc1.in_features == 1152  # DPDM's own, unchanged
