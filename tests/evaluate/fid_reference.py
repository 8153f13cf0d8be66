"""The reference FID code, unmodified, loaded without importing torchvision's compiled part.

scripts/setup.sh installs the wheels pinned below with `pip install --no-deps --target` into
`.venv/tdpdm-reference`, a folder that is never on sys.path (PyPI's torchvision does not import
beside the CPU torch build used here: its `torchvision::nms` registration fails). This module
executes, from those wheels, the real source files

  - pytorch_fid/inception.py  (InceptionV3, fid_inception_v3, FIDInceptionA/C/E_1/E_2)
  - pytorch_fid/fid_score.py  (calculate_frechet_distance)
  - torchvision/models/inception.py  (Inception3, InceptionA..E, BasicConv2d, inception_v3)

and stands in only for what those files import from the rest of torchvision and that plays no
part in the network: the package object, the weights registry (`_api`, `_meta`, `_utils`: used
only when pretrained torchvision weights are asked for, which pytorch-fid does not do),
`_log_api_usage_once`, the `transforms` presets, and `transforms.ToTensor` (used by
pytorch-fid's image-file loader, which these tests do not call). The stand-ins live in
sys.modules only while the files load.
"""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import scipy.linalg

PYTORCH_FID_VERSION = "0.3.0"
TORCHVISION_VERSION = "0.29.1"
_PREFIXES = ("torchvision", "pytorch_fid")


def reference_dir() -> Path:
    return Path(os.environ.get("TDPDM_REFERENCE_DIR") or Path(sys.prefix) / "tdpdm-reference")


def require_reference() -> Path:
    """The folder with both wheels at the pinned versions; skip when absent, but fail under CI."""
    root = reference_dir()
    found = {}
    if root.is_dir():
        for dist in importlib.metadata.distributions(path=[str(root)]):
            found[dist.metadata["Name"].lower()] = dist.version.split("+")[0]
    want = {"pytorch-fid": PYTORCH_FID_VERSION, "torchvision": TORCHVISION_VERSION}
    if (
        found.get("pytorch-fid") == want["pytorch-fid"]
        and found.get("torchvision") == want["torchvision"]
    ):
        return root
    message = (
        f"reference FID code not found in {root} (want {want}, found {found}); "
        "run scripts/setup.sh dev or set TDPDM_REFERENCE_DIR"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _ours(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _PREFIXES)


@contextmanager
def _private_modules() -> Iterator[None]:
    """Whatever torchvision/pytorch_fid modules exist are set aside, and put back afterwards."""
    saved = {name: mod for name, mod in sys.modules.items() if _ours(name)}
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [n for n in sys.modules if _ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _module(name: str, **attrs: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _exec_file(name: str, path: Path, package_dir: Path | None = None) -> types.ModuleType:
    locations = [str(package_dir)] if package_dir is not None else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _torchvision_stand_in(root: Path) -> types.ModuleType:
    """A `torchvision` whose `models.inception` is the real file and the rest inert stand-ins."""

    def identity_decorator(*_args: object, **_kwargs: object):
        return lambda fn: fn

    class Weights:
        def __init__(self, url: str, transforms: object, meta: dict) -> None:
            self.url, self.transforms, self.meta = url, transforms, meta

    class WeightsEnum(enum.Enum):
        @classmethod
        def verify(cls, obj: object) -> object:
            if obj is not None:
                raise RuntimeError("pretrained torchvision weights are not available here")
            return None

    def no_pretrained(*_args: object, **_kwargs: object):
        raise RuntimeError("pretrained torchvision weights are not available here")

    class ToTensor:
        def __init__(self) -> None:
            raise RuntimeError("pytorch-fid's image-file loader is not used by these tests")

    tv = _module("torchvision", __path__=[], __version__=TORCHVISION_VERSION)
    tv.transforms = _module("torchvision.transforms", __path__=[], ToTensor=ToTensor)
    _module("torchvision.transforms._presets", ImageClassification=object)
    tv.utils = _module("torchvision.utils", _log_api_usage_once=lambda _obj: None)
    tv.models = _module("torchvision.models", __path__=[])
    _module(
        "torchvision.models._api",
        register_model=identity_decorator,
        Weights=Weights,
        WeightsEnum=WeightsEnum,
    )
    _module("torchvision.models._meta", _IMAGENET_CATEGORIES=[])
    _module(
        "torchvision.models._utils",
        _ovewrite_named_param=no_pretrained,
        handle_legacy_interface=identity_decorator,
    )
    inception = _exec_file(
        "torchvision.models.inception", root / "torchvision" / "models" / "inception.py"
    )
    tv.models.inception = inception
    tv.models.Inception3 = inception.Inception3
    tv.models.inception_v3 = inception.inception_v3
    return tv


def _sqrtm_with_disp(a, disp=True):
    """scipy.linalg.sqrtm with the `disp` argument pytorch-fid passes (gone from newer scipy)."""
    root = scipy.linalg.sqrtm(a)
    if disp:
        return root
    arg2 = scipy.linalg.norm(root @ root - a, "fro") ** 2 / scipy.linalg.norm(a, "fro")
    return root, arg2


@contextmanager
def load_reference() -> Iterator[types.SimpleNamespace]:
    """(torchvision inception module, pytorch_fid.inception, pytorch_fid.fid_score), real code.

    The objects stay usable after the block; the modules are only visible inside it.
    """
    root = require_reference()
    with _private_modules():
        tv = _torchvision_stand_in(root)
        _exec_file("pytorch_fid", root / "pytorch_fid" / "__init__.py", root / "pytorch_fid")
        fid_inception = importlib.import_module("pytorch_fid.inception")
        fid_score = importlib.import_module("pytorch_fid.fid_score")
        if "disp" not in inspect.signature(scipy.linalg.sqrtm).parameters:
            fid_score.linalg = types.SimpleNamespace(sqrtm=_sqrtm_with_disp)
        for mod in (fid_inception, fid_score):
            assert Path(mod.__file__).resolve().is_relative_to(root.resolve()), mod.__file__
        yield types.SimpleNamespace(
            torchvision_inception=tv.models.inception,
            inception=fid_inception,
            fid_score=fid_score,
            root=root,
        )
