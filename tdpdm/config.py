"""Pipeline configuration: typed, validated, loaded from YAML with command-line overrides.

Unknown keys are errors (a typo must not silently fall back to a default that spends budget
differently), and every check names the offending key in one line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

MODES = ("private", "released")
DATASETS = ("mnist", "fashion-mnist")


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


@dataclass
class Stage1Config:
    """Privacy encoding: the DP-SGD autoencoder."""

    latent_dim: int = 32
    width: int = 32
    epochs: float = 4.0
    batch_size: int = 512
    lr: float = 2e-3
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "hooks"
    epsilon_fraction: float = 0.15
    """Share of the run's epsilon given to stage 1 when calibrating (the rest goes to stage 2
    or to the release)."""


@dataclass
class ReleaseConfig:
    """`released` mode: the per-record Gaussian release of clipped [latent, label] vectors."""

    clip_norm: float = 1.0
    label_scale: float = 0.6
    """Length of the one-hot label appended to the unit latent before clipping."""


@dataclass
class Stage2Config:
    """Latent diffusion."""

    hidden: int = 192
    depth: int = 2
    epochs: float = 40.0
    batch_size: int = 1024
    lr: float = 2e-3
    max_grad_norm: float = 1.0
    noise_draws: int = 4
    label_dropout: float = 0.1
    ema_decay: float = 0.995
    sampler_steps: int = 50
    guidance: float = 1.0
    grad_sample_mode: str = "ghost"
    """Opacus per-sample gradients: `hooks` (materialised) or `ghost` (ghost clipping; the same
    clipped update, tested, and about 4x faster for this MLP on CPU: benchmarks/dp_overhead.py)."""


@dataclass
class EvalConfig:
    synthetic_count: int = 10000
    classifier_epochs: int = 5
    evaluator_epochs: int = 3
    inception_weights: str | None = None
    inception_sha256: str | None = None
    enabled: bool = True


@dataclass
class RunConfig:
    dataset: str = "mnist"
    data_dir: str = "../shared/datasets"
    download: bool = False
    mode: str = "private"
    epsilon: float = 10.0
    delta: float = 1e-5
    subset: int | None = 10000
    seed: int = 0
    device: str = "cpu"
    ledger: str = "runs/ledger.json"
    out: str = "runs/latest"
    cache_dir: str = ".tdpdm-cache"
    job_id: str | None = None
    metrics_port: int | None = None
    progress: bool = True
    stage1: Stage1Config = field(default_factory=Stage1Config)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> RunConfig:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not (self.epsilon > 0) or not math.isfinite(self.epsilon):
            raise ConfigError(f"epsilon must be a positive finite number, got {self.epsilon}")
        if not (0 < self.delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.subset is not None and self.subset < 2:
            raise ConfigError(f"subset must be at least 2 records, got {self.subset}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}")
        s1, s2 = self.stage1, self.stage2
        _positive(
            "stage1", s1, "latent_dim", "width", "epochs", "batch_size", "lr", "max_grad_norm"
        )
        _positive(
            "stage2",
            s2,
            "hidden",
            "depth",
            "epochs",
            "batch_size",
            "lr",
            "max_grad_norm",
            "noise_draws",
            "sampler_steps",
        )
        _positive("release", self.release, "clip_norm")
        if not (0 < s1.epsilon_fraction < 1):
            raise ConfigError(
                f"stage1.epsilon_fraction must be in (0, 1), got {s1.epsilon_fraction}"
            )
        if not (0 <= s2.label_dropout < 1):
            raise ConfigError(f"stage2.label_dropout must be in [0, 1), got {s2.label_dropout}")
        if not (0 <= s2.ema_decay < 1):
            raise ConfigError(f"stage2.ema_decay must be in [0, 1), got {s2.ema_decay}")
        for section, stage in (("stage1", s1), ("stage2", s2)):
            if stage.grad_sample_mode not in ("hooks", "ghost"):
                raise ConfigError(
                    f"{section}.grad_sample_mode must be hooks or ghost, got "
                    f"{stage.grad_sample_mode!r}"
                )
        if self.evaluation.synthetic_count < 20:
            raise ConfigError("evaluation.synthetic_count must be at least 20")
        return self

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (value > 0) or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"unknown config key {path!r}; known: {', '.join(sorted(known))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, path)
        else:
            kwargs[key] = _coerce(value, hint, path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    text = str(hint)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} must not be empty")
    try:
        if hint is bool or text.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
                return str(value).lower() in ("true", "yes", "1")
            raise ValueError
        if hint is int or text.startswith("int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if hint is float or text.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if math.isnan(out):
                raise ValueError
            return out
        if hint is str or text.startswith("str"):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {value!r} is not a valid {text}") from None
    return value


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults, then the YAML file, then `overrides` (dotted keys like 'stage2.epochs'; a
    None value sets the key to None, so callers pass only what the user gave)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"config {path} is not valid YAML: {str(err).splitlines()[0]}"
            ) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {part!r} is not a section")
        node[leaf] = value
    return _build(RunConfig, data, "").validate()
