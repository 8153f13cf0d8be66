"""Pipeline configuration: typed, validated, loaded from YAML with command-line overrides.

Unknown keys are errors (a typo must not silently fall back to a default that spends budget
differently), and every check names the offending key in one line.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

MODES = ("private", "released")
STAGE1_MECHANISMS = ("dpsgd-autoencoder", "lipschitz-vae")
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
    mechanism: str = "dpsgd-autoencoder"
    """`dpsgd-autoencoder` (the conv autoencoder) or `lipschitz-vae` (a VAE with a proven
    Lipschitz bound whose latents are released by the Gaussian mechanism: `released` mode only;
    stages/lipschitz_release.py)."""
    vae_hidden: int = 256
    """`lipschitz-vae`: width of the encoder and decoder MLPs."""


@dataclass
class ReleaseConfig:
    """`released` mode: the per-record Gaussian release of clipped [latent, label] vectors."""

    clip_norm: float = 1.0
    label_scale: float = 0.6
    """Share of the clip norm given to the one-hot label, in (0, 1); the latent gets the rest
    (sqrt(1 - label_scale^2) of it), so the vector never needs clipping."""


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
    released_model: str = "deconvolution"
    """`released` mode's stage 2: `deconvolution` (a Gaussian mixture fitted through the known
    release noise, stages/deconvolve.py) or `diffusion` (the denoiser on the noisy latents)."""
    mixture_components: int = 3
    """Deconvolution: mixture components per class."""
    mixture_iterations: int = 100
    """Deconvolution: EM iterations."""
    private_model: str = "diffusion"
    """`private` mode's stage 2: `diffusion` (DP-SGD latent diffusion) or `dp-moments` (class
    Gaussians from one Gaussian release of per-class moments, stages/dp_moments.py)."""
    moments_covariance: str = "full"
    """dp-moments: `full` or `diagonal` covariances (diagonal: d instead of d(d+1)/2 noisy
    entries per class; better at small epsilon)."""


@dataclass
class TuneConfig:
    """Ray Tune over stage 2 (`trials: 0` = off). In `private` mode every trial is its own
    ledger charge; trials are calibrated so that stage 1 plus `budgeted_trials` trials meet the
    run's epsilon, and trials asked for beyond what fits are refused before they read data."""

    trials: int = 0
    budgeted_trials: int = 2
    max_concurrent_trials: int = 2
    reports: int = 4
    """Noisy scores each trial reports (ASHA's rungs); each is one accounted Gaussian release."""
    grace_period: int = 1
    reduction_factor: int = 2
    holdout_fraction: float = 0.1
    """Probability that a record is held out of training to score trials: one independent secret
    draw per record (a record's role never depends on the others); planning uses the expected
    sizes."""
    score_clip: float = 2.0
    """Per-record held-out loss is clipped to [0, score_clip] before the noisy mean."""
    score_noise_multiplier: float = 4.0
    """Std of the noise on the held-out loss sum over the clipped loss's half-range."""
    lr: list[float] = field(default_factory=lambda: [1e-3, 2e-3, 4e-3])
    hidden: list[int] = field(default_factory=lambda: [128, 192, 256])
    depth: list[int] = field(default_factory=lambda: [2, 3])
    ema_decay: list[float] = field(default_factory=lambda: [0.99, 0.995, 0.999])
    label_dropout: list[float] = field(default_factory=lambda: [0.1])
    noise_draws: list[int] = field(default_factory=lambda: [4])
    cpus_per_trial: float = 1.0


@dataclass
class DistributedConfig:
    """Where stage 1's DP-SGD runs. `ray` (the default): a Ray Train worker group, on a local
    in-process Ray unless `address` names a cluster (`auto`, `ray://host:10001`, `host:6379`).
    `local`: the in-process core without Ray (e.g. a GPU machine where Ray is absent)."""

    backend: str = "ray"
    address: str | None = None
    num_workers: int = 1
    use_gpu: bool = False
    max_failures: int = 2
    """Worker failures Ray Train recovers from, each from the latest checkpoint."""
    checkpoint_every: int = 50
    """DP-SGD steps between checkpoints (the last step is always checkpointed)."""
    storage_path: str | None = None
    """Ray Train checkpoints (a local dir or s3:// URI); default `<out>/ray`."""


@dataclass
class EvalConfig:
    synthetic_count: int = 10000
    classifier_epochs: int = 5
    evaluator_epochs: int = 3
    inception_weights: str | None = None
    inception_sha256: str | None = None
    enabled: bool = False
    """Opt-in: evaluation reads the real train/test splits without noise; its metrics go to the
    custodian part only (custodian/report.json, evaluation.json), never to the release."""


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
    custodian_losses: bool = False
    """Opt-in: show training losses (unnoised statistics of private records) on the progress
    bar and telemetry and keep them in custodian/report.json; the report lists them as not
    covered."""
    stage1: Stage1Config = field(default_factory=Stage1Config)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

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
        if not (0 < self.release.label_scale < 1):
            raise ConfigError(
                f"release.label_scale must be in (0, 1), got {self.release.label_scale}"
            )
        if s2.private_model not in ("diffusion", "dp-moments"):
            raise ConfigError(
                f"stage2.private_model must be diffusion or dp-moments, got {s2.private_model!r}"
            )
        if s2.moments_covariance not in ("full", "diagonal"):
            raise ConfigError(
                f"stage2.moments_covariance must be full or diagonal, got {s2.moments_covariance!r}"
            )
        if self.tune.trials and s2.private_model != "diffusion" and self.mode == "private":
            raise ConfigError("tune.trials searches the diffusion model: set stage2.private_model")
        if s2.released_model not in ("deconvolution", "diffusion"):
            raise ConfigError(
                "stage2.released_model must be deconvolution or diffusion, got "
                f"{s2.released_model!r}"
            )
        _positive("stage2", s2, "mixture_components", "mixture_iterations")
        if s1.mechanism not in STAGE1_MECHANISMS:
            raise ConfigError(
                f"stage1.mechanism must be one of {STAGE1_MECHANISMS}, got {s1.mechanism!r}"
            )
        if s1.mechanism == "lipschitz-vae" and self.mode != "released":
            raise ConfigError(
                "stage1.mechanism lipschitz-vae is a per-record release of the latents: it "
                f"needs mode: released, not {self.mode!r}"
            )
        if s1.vae_hidden < 2 or s1.vae_hidden % 2:
            raise ConfigError(f"stage1.vae_hidden must be an even number >= 2, got {s1.vae_hidden}")
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
        _check_tune(self.tune)
        if self.tune.trials and self.mode == "released" and s2.released_model != "diffusion":
            raise ConfigError(
                "tune.trials searches the diffusion model: set stage2.released_model: diffusion "
                "(or tune.trials: 0)"
            )
        _check_distributed(self.distributed)
        if self.evaluation.synthetic_count < 20:
            raise ConfigError("evaluation.synthetic_count must be at least 20")
        return self

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_tune(t: TuneConfig) -> None:
    if t.trials < 0:
        raise ConfigError(f"tune.trials must be >= 0 (0 = no search), got {t.trials}")
    _positive(
        "tune",
        t,
        "budgeted_trials",
        "max_concurrent_trials",
        "reports",
        "grace_period",
        "score_clip",
        "score_noise_multiplier",
        "cpus_per_trial",
    )
    if t.reduction_factor < 2:
        raise ConfigError(f"tune.reduction_factor must be at least 2, got {t.reduction_factor}")
    if not (0 < t.holdout_fraction < 0.5):
        raise ConfigError(f"tune.holdout_fraction must be in (0, 0.5), got {t.holdout_fraction}")
    for name in ("lr", "hidden", "depth", "ema_decay", "label_dropout", "noise_draws"):
        values = getattr(t, name)
        if not values:
            raise ConfigError(f"tune.{name} must list at least one value")
        for value in values:
            if not (value >= 0) or (name != "label_dropout" and not (value > 0)):
                raise ConfigError(f"tune.{name}: {value!r} is not a valid value")
    if any(v >= 1 for v in t.ema_decay) or any(v >= 1 for v in t.label_dropout):
        raise ConfigError("tune.ema_decay and tune.label_dropout values must be below 1")


def _check_distributed(d: DistributedConfig) -> None:
    if d.backend not in ("ray", "local"):
        raise ConfigError(f"distributed.backend must be ray or local, got {d.backend!r}")
    _positive("distributed", d, "num_workers", "checkpoint_every")
    if d.max_failures < -1:
        raise ConfigError(
            f"distributed.max_failures must be >= -1 (-1 = always), got {d.max_failures}"
        )
    if d.backend == "local" and (d.num_workers != 1 or d.address):
        raise ConfigError(
            "distributed.backend local runs one in-process worker: set backend: ray for "
            "num_workers > 1 or an address"
        )


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
    if text.startswith("list["):
        try:
            items = yaml.safe_load(value) if isinstance(value, str) else value
        except (yaml.YAMLError, RecursionError):
            items = None
        if not isinstance(items, list):
            raise ConfigError(f"{path}: {_short(value)} is not a list (write e.g. [1, 2])")
        inner = hint.__args__[0]
        return [_coerce(item, inner, f"{path}[{i}]") for i, item in enumerate(items)]
    try:
        if hint is bool or text.startswith("bool"):
            if isinstance(value, bool):
                return value
            # Only scalars are stringified: str() of a YAML alias bomb never returns.
            if not isinstance(value, (str, int)):
                raise ValueError
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
    except (TypeError, ValueError, OverflowError):
        name = getattr(hint, "__name__", text)
        raise ConfigError(f"{path}: {_short(value)} is not a valid {name}") from None
    return value


def _short(value: Any) -> str:
    """A bounded repr for error messages: YAML aliases can nest a value exponentially."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict = 2, 4, 4
    short.maxstring = short.maxother = 60
    return short.repr(value)


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults, then the YAML file, then `overrides` (dotted keys like 'stage2.epochs'; a
    None value sets the key to None, so callers pass only what the user gave)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config {path} is not UTF-8 text") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"config {path} is not valid YAML: {str(err).splitlines()[0]}"
            ) from None
        except RecursionError:
            raise ConfigError(f"config {path} nests too deeply to be a config") from None
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
