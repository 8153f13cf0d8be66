import pytest
import torch

from tdpdm.evaluate import evaluator
from tdpdm.evaluate.evaluator import evaluator_cache_path, load_or_train_evaluator


def _no_training(*args, **kwargs):
    raise AssertionError("the evaluator was retrained instead of loaded from the cache")


@pytest.fixture
def small(mnist):
    return mnist["train_images"][:300], mnist["train_labels"][:300]


def test_second_call_loads_from_cache(tmp_path, monkeypatch, small):
    first = load_or_train_evaluator(
        "mnist", *small, cache_dir=str(tmp_path), epochs=1, device="cpu", progress=False
    )
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [
        evaluator_cache_path("mnist", *small, cache_dir=str(tmp_path), epochs=1, seed=0).name
    ]
    monkeypatch.setattr(evaluator, "train_classifier", _no_training)
    second = load_or_train_evaluator(
        "mnist", *small, cache_dir=str(tmp_path), epochs=1, device="cpu", progress=False
    )
    s1, s2 = first.state_dict(), second.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not second.training
    assert not any(p.requires_grad for p in second.parameters())


def test_key_covers_data_epochs_and_dataset(tmp_path, monkeypatch, small):
    load_or_train_evaluator(
        "mnist", *small, cache_dir=str(tmp_path), epochs=1, device="cpu", progress=False
    )
    monkeypatch.setattr(evaluator, "train_classifier", _no_training)
    images, labels = small
    changed = labels.copy()
    changed[0] = (changed[0] + 1) % 10
    for args, kwargs in [
        (("mnist", images, changed), {"epochs": 1}),
        (("mnist", images, labels), {"epochs": 2}),
        (("fashion", images, labels), {"epochs": 1}),
    ]:
        with pytest.raises(AssertionError, match="retrained"):
            load_or_train_evaluator(
                *args, cache_dir=str(tmp_path), device="cpu", progress=False, **kwargs
            )


def test_corrupt_cache_is_retrained(tmp_path, small):
    path = evaluator_cache_path("mnist", *small, cache_dir=str(tmp_path), epochs=1, seed=0)
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        load_or_train_evaluator(
            "mnist", *small, cache_dir=str(tmp_path), epochs=1, device="cpu", progress=False
        )
    assert torch.load(path, weights_only=True)["fc2.weight"].shape == (10, 128)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_rejects_unsafe_dataset_name(tmp_path, small):
    with pytest.raises(ValueError, match="dataset name"):
        load_or_train_evaluator(
            "../etc", *small, cache_dir=str(tmp_path), epochs=1, device="cpu", progress=False
        )
