"""Hypothesis fuzzing of the config loader: any YAML document, any key, any value, any
command-line override gives a valid RunConfig or one ConfigError line, never another exception.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_support import FUZZ, FUZZ_SLOW, one_line
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from tdpdm.config import ConfigError, RunConfig, load_config

pytestmark = pytest.mark.timeout(300)


def _key_paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key the config knows, read from the models (new sections included)."""
    out = []
    for name, field in cls.model_fields.items():
        path = f"{prefix}{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _key_paths(field.annotation, f"{path}.")
        else:
            out.append(path)
    return out


KEYS = _key_paths(RunConfig)
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k})

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["mnist", "private", "released", "cpu", "1e400", "-inf", "nan", "0x10"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Mostly mappings with real keys (so validation is reached), sometimes anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    doc: dict[Any, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=6)):
        node = doc
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = draw(VALUES)
    if draw(st.booleans()):
        doc[draw(st.one_of(st.text(max_size=8), st.sampled_from(SECTIONS)))] = draw(VALUES)
    return doc


_files = itertools.count()


def _load(tmp: Path, text: str | bytes, overrides: dict[str, Any] | None = None) -> None:
    path = tmp / f"config-{next(_files)}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        cfg = load_config(path, overrides)
    except ConfigError as err:
        assert one_line(str(err)), str(err)
        return
    assert isinstance(cfg, RunConfig)
    assert cfg.epsilon > 0 and 0 < cfg.delta < 1


@FUZZ_SLOW
@given(documents())
def test_yaml_documents(tmp_path_factory: pytest.TempPathFactory, doc: Any) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    _load(tmp_path_factory.mktemp("cfg"), text)


@FUZZ
@given(st.binary(max_size=200))
def test_raw_bytes(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    _load(tmp_path_factory.mktemp("cfg"), blob)


@FUZZ
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(KEYS), st.text(max_size=10), st.sampled_from(SECTIONS)),
        st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["[1, 2", "1e999", "[[["])),
        max_size=4,
    )
)
def test_command_line_overrides(tmp_path_factory: pytest.TempPathFactory, overrides) -> None:
    """What `--set KEY=VALUE` and the flags pass: dotted keys and strings (or None)."""
    _load(tmp_path_factory.mktemp("cfg"), "{}", overrides)


def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", ["progress", "epsilon", "seed", "dataset", "tune.lr", "stage1"])
def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path, key: str) -> None:
    """9 levels of 9-way aliases: 387 M leaves if anything expands it (a repr, a str())."""
    bomb = yaml.safe_load(_alias_bomb(9))["a8"]  # shared references: cheap until expanded
    with pytest.raises(ConfigError) as info:
        load_config(None, {key: bomb})
    assert one_line(str(info.value)) and len(str(info.value)) < 300
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9) + "\nprogress: *a8\n")
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[" * 3000 + b"]" * 3000, "nests too deeply"),
        (b"subset: 1e400\n", "subset"),
        (b"stage1:\n  latent_dim: .inf\n", "stage1.latent_dim"),
        (b"epsilon: -1\n", "epsilon must be a positive"),
        (b"epsilon: 0\n", "epsilon must be a positive"),
        (b"delta: 1\n", "delta must be in"),
        (b"epsilon: .nan\n", "epsilon"),
        (b"- a\n- b\n", "mapping at the top level"),
        (b"stage2: 5\n", "stage2 must be a mapping"),
        (b"stage1:\n  latnet_dim: 3\n", "unknown config key 'stage1.latnet_dim'"),
    ],
)
def test_each_bad_config_names_its_key(tmp_path: Path, text: bytes, problem: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=problem) as info:
        load_config(path)
    assert one_line(str(info.value))
