"""Pipeline configuration: typed, validated, loaded from YAML with command-line overrides.

The sections are pydantic models, frozen and `extra="forbid"`: an unknown key is an error (a
typo must not silently fall back to a default that spends budget differently), a validated
config cannot change under the run that checked it (derive a checked copy with `replace`), and
every refusal is one ConfigError line naming the dotted key.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tdpdm.choices import (  # noqa: F401 (the config's names)
    DATASETS,
    MODES,
    STAGE1_MECHANISMS,
    Dataset,
    LatentShape,
    Mode,
    MomentsCovariance,
    PrivateModel,
    ReleasedModel,
    Stage1Mechanism,
)
from tdpdm.config_errors import ConfigError, short, validated
from tdpdm.data.selection import default_name, selection_problem


def _no_bool(value: Any) -> Any:
    """pydantic's lax mode reads `true` as 1; a flag where a number belongs is a mistake."""
    if isinstance(value, bool):
        raise PydanticCustomError("not_a_number", "a boolean is not a number")
    return value


def _yaml_list(value: Any) -> Any:
    """A list given on the command line arrives as YAML text: `--set tune.lr=[1e-3, 3e-3]`."""
    if isinstance(value, str):
        with contextlib.suppress(yaml.YAMLError, RecursionError):
            value = yaml.safe_load(value)
    if not isinstance(value, (list, tuple)):
        raise PydanticCustomError("not_a_list", "not a list")
    return value


def _positive_finite(value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"must be a positive finite number, got {value}")
    return value


def _device(value: str) -> str:
    if value in ("cpu", "cuda") or value.startswith("cuda:"):
        return value
    raise ValueError(f"must be cpu or cuda, got {short(value)}")


# Constraints before the BeforeValidator, so that they stay in the JSON Schema.
NoBool = BeforeValidator(_no_bool)
Int = Annotated[int, NoBool]
Float = Annotated[float, NoBool]
PositiveInt = Annotated[int, Field(gt=0), NoBool]
PositiveFloat = Annotated[float, Field(gt=0), NoBool]
Fraction = Annotated[float, Field(gt=0, lt=1), NoBool]
Rate = Annotated[float, Field(ge=0, lt=1), NoBool]
GradSampleMode = Literal["hooks", "ghost"]
"""Opacus per-sample gradients: `hooks` (materialised) or `ghost` (ghost clipping)."""
AsList = BeforeValidator(_yaml_list)
Floats = Annotated[tuple[PositiveFloat, ...], Field(min_length=1), AsList]
Ints = Annotated[tuple[PositiveInt, ...], Field(min_length=1), AsList]
Fractions = Annotated[tuple[Fraction, ...], Field(min_length=1), AsList]
Rates = Annotated[tuple[Rate, ...], Field(min_length=1), AsList]

_Section = TypeVar("_Section", bound="Section")


class Section(BaseModel):
    """Shared settings: frozen, unknown keys refused, NaN and infinities refused, numbers read
    as text where text belongs (YAML reads `job_id: 7` as an int), docstrings as descriptions."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        coerce_numbers_to_str=True,
        use_attribute_docstrings=True,
    )

    def replace(self: _Section, **changes: Any) -> _Section:
        """A validated copy with `changes` (`model_copy(update=...)` would skip the checks)."""
        return validated(type(self), {**self.model_dump(), **changes})


class Stage1Config(Section):
    """Privacy encoding: the DP-SGD autoencoder."""

    latent: LatentShape = "vector"
    """`vector`: `latent_dim` numbers; `spatial`: `latent_channels` maps at a quarter of the
    image size, flattened (2x7x7 = 98 on MNIST). Stage 2 gets a flat vector in [-1, 1] anyway."""
    latent_dim: PositiveInt = 32
    latent_channels: PositiveInt = 2
    width: PositiveInt = 32
    epochs: PositiveFloat = 4.0
    batch_size: PositiveInt = 512
    lr: PositiveFloat = 2e-3
    max_grad_norm: PositiveFloat = 1.0
    grad_sample_mode: GradSampleMode = "hooks"
    physical_batch_size: PositiveInt | None = None
    """Most records in one forward/backward pass (memory); a larger Poisson batch is processed
    in chunks whose clipped gradients are summed before the step's one noise draw (virtual
    steps): the same mechanism and accounting. None: the whole batch at once (peak memory grows
    with batch x width; session 11's width-64 stage 1 at batch 1024 passed 23 GB)."""
    epsilon_fraction: Fraction = 0.15
    """Share of the run's epsilon given to stage 1 when calibrating (the rest goes to stage 2
    or to the release)."""
    mechanism: Stage1Mechanism = "dpsgd-autoencoder"
    """`dpsgd-autoencoder` (the conv autoencoder) or `lipschitz-vae` (a VAE with a proven
    Lipschitz bound whose latents are released by the Gaussian mechanism: `released` mode only;
    stages/lipschitz_release.py)."""
    label_objective_weight: Annotated[Float, Field(ge=0.0, le=100.0)] = 0.0
    """Weight of a label cross-entropy (a linear head on the latent, dropped after training)
    beside the reconstruction loss (both mechanisms; for `lipschitz-vae` the head reads mu(x)
    and is no part of the bounded encoder). It spreads the classes apart in the latent,
    which a per-record release (`released` mode) needs; the labels are then in the DP-SGD
    batches, under the same per-record clipping and noise (no extra privacy cost)."""
    conditional_decoder: bool = False
    """The decoder reads the one-hot label beside the latent (both mechanisms; the labels ride
    in the same clipped DP-SGD batches, no extra privacy cost). The class is then drawn by the
    decoder's DP weights and the latent need only carry the style, which is what a per-record
    release (`released` mode), whose noise drowns the latents' class signal, needs (issue 14).
    For `lipschitz-vae` it is no part of the bounded encoder."""
    decoder_latent_noise: Literal["release"] | PositiveFloat | None = None
    """`dpsgd-autoencoder`: while training, the decoder reads the latent plus Gaussian noise of
    this std (`release`: the per-record release's own noise on the latent scale, `released`
    mode only), so that a label-conditioned decoder learns to take from the label what the
    release's noise hides in the latent (issue 14). None: the clean latent. Privacy-neutral:
    the model's own randomness, on DP-SGD's secret loss stream. Measured (MNIST, seed 0): 1.0
    gives every sample its label's class but little variety, the same accuracy at epsilon 10;
    `release` (std 29 at epsilon 1) keeps the decoder from training; benchmarks/RESULTS.md."""
    vae_hidden: Annotated[int, Field(ge=2, multiple_of=2), NoBool] = 256
    """`lipschitz-vae`: width of the encoder and decoder MLPs (even)."""
    vae_training_noise: Literal["release"] | PositiveFloat | None = None
    """`lipschitz-vae`: the posterior std while training, on the mu scale. `release`: the
    release's own noise, so the decoder learns to decode *noisy* latents (right for a stage 2
    that models the noisy release, `released_model: diffusion`); a number: that std, so the
    decoder learns to decode *clean* latents (right for the deconvolved mixture, which samples
    clean ones). None: whichever fits `stage2.released_model`. Privacy-neutral: DP-SGD's
    guarantee does not depend on the model's own noise."""


class ReleaseConfig(Section):
    """`released` mode: the per-record Gaussian release of clipped [latent, label] vectors."""

    clip_norm: PositiveFloat = 1.0
    label_scale: Fraction = 0.6
    """Share of the clip norm given to the one-hot label, in (0, 1); the latent gets the rest
    (sqrt(1 - label_scale^2) of it), so the vector never needs clipping."""


class Stage2Config(Section):
    """Latent diffusion."""

    hidden: PositiveInt = 192
    depth: PositiveInt = 2
    epochs: PositiveFloat = 40.0
    batch_size: PositiveInt = 1024
    lr: PositiveFloat = 2e-3
    max_grad_norm: PositiveFloat = 1.0
    noise_draws: PositiveInt = 4
    label_dropout: Rate = 0.1
    ema_decay: Rate = 0.995
    sampler_steps: PositiveInt = 50
    guidance: Float = 1.0
    sharpen: Annotated[float, Field(ge=0), NoBool] = 0.0
    """Unsharp-mask amount for the decoded samples (models/sharpen.py; 0: off). A fixed filter
    on each sample alone, so post-processing: no privacy cost. The decoder's samples are blurred
    means. With 2.0 the CPU table's epsilon-10 rows keep their accuracy (Fashion-MNIST 81.06 +-
    0.71 against 81.19 +- 0.45 %, MNIST 96.00 +- 0.10 against 96.28 +- 0.06) while the
    classifier-FD falls from 27 to 5 and from 72 to 8 (benchmarks/RESULTS.md, session 14): a
    fidelity lever, off by default."""
    grad_sample_mode: GradSampleMode = "ghost"
    """Opacus per-sample gradients: `hooks` (materialised) or `ghost` (ghost clipping; the same
    clipped update, tested, and about 4x faster for this MLP on CPU: benchmarks/dp_overhead.py)."""
    physical_batch_size: PositiveInt | None = None
    """As `stage1.physical_batch_size`, for the DP-SGD latent diffusion."""
    released_model: ReleasedModel = "deconvolution"
    """`released` mode's stage 2: `deconvolution` (a Gaussian mixture fitted through the known
    release noise, stages/deconvolve.py), `ambient-diffusion` (a denoiser trained through that
    noise on labels inferred by the mixture, stages/ambient.py) or `diffusion` (the denoiser on
    the noisy latents as if clean)."""
    mixture_components: PositiveInt = 3
    """Deconvolution and dp-mixture: mixture components per class."""
    mixture_iterations: PositiveInt = 100
    """Deconvolution: EM iterations."""
    private_model: PrivateModel = "diffusion"
    """`private` mode's stage 2: `diffusion` (DP-SGD latent diffusion), `dp-moments` (class
    Gaussians from DP per-class moments) or `dp-mixture` (class mixtures by DP hard EM)."""
    moments_covariance: MomentsCovariance = "full"
    """dp-moments/-mixture: `full` (one per class), `diagonal` (d, not d(d+1)/2, noisy entries
    per class) or `pooled` (one full within-class covariance from all classes' moments, with
    per-class means: a tenth of the noise; the choice for small epsilon)."""
    mixture_rounds: PositiveInt = 3
    """dp-mixture: DP hard-EM rounds (each one Gaussian release of component counts and sums)."""
    mixture_assignment: Literal["mahalanobis", "spherical"] = "mahalanobis"
    """dp-mixture: a record joins the component nearest by Mahalanobis distance under its
    class's shared within covariance, or by Euclidean distance scaled by the class's mean
    variance (`spherical`, k-means' rule). Post-processing of released values either way."""
    mixture_covariance: Literal["class", "component"] = "class"
    """dp-mixture: one covariance a class shared by its components, or one a component (one
    more moments release, per (class, component) row)."""
    moments_radius: Annotated[float, Field(gt=0, le=1), NoBool] = 0.5
    """dp-moments/-mixture: latents are clipped to the L2 norm moments_radius x sqrt(d) before
    their moments are summed (public; 1 = the corner of [-1, 1]^d, no clipping). The second
    moments' noise scales with its square. 0.5 was chosen by looking at the MNIST spatial
    latents' norms (all below 0.45 sqrt(d); a custodian-side look, stated in RESULTS.md): at
    epsilon 1 it lifted dp-moments from 82.9 % to 92.3 %. Fashion-MNIST's latents are longer
    (39 % above 0.5 sqrt(d)): there 1.0 lifts the epsilon-10 dp-mixture from 81.2 % to 81.8 %
    (RESULTS.md, session 14), and the CPU table's epsilon-10 rows use 1.0 since session 15."""
    moments_centred: bool = True
    """dp-moments/-mixture: release the second moments about public centres (one cheap release
    of class means and spreads first), clipped to a radius from the released spread: the
    covariance noise falls by (R / rho)^2 (dp_moments.py). MNIST, all records, epsilon 1, 3
    seeds: 94.9 % against 93.8 % uncentred; a tie at epsilon 10 (RESULTS.md, session 10)."""
    moments_clip_ratio: Annotated[float, Field(gt=0), NoBool] = 2.5
    """Centred: each row's clip radius^2 over its released spread E ||z - mean||^2."""


class TuneConfig(Section):
    """Ray Tune over stage 2 (`trials: 0` = off). In `private` mode every trial is its own
    ledger charge; trials are calibrated so that stage 1 plus `budgeted_trials` trials meet the
    run's epsilon, and trials asked for beyond what fits are refused before they read data."""

    trials: Annotated[int, Field(ge=0), NoBool] = 0
    """Trials to run; 0 = no search."""
    budgeted_trials: PositiveInt = 2
    max_concurrent_trials: PositiveInt = 2
    reports: PositiveInt = 4
    """Noisy scores each trial reports (ASHA's rungs); each is one accounted Gaussian release."""
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[int, Field(ge=2), NoBool] = 2
    holdout_fraction: Annotated[float, Field(gt=0, lt=0.5), NoBool] = 0.1
    """Probability that a record is held out of training to score trials: one independent secret
    draw per record (a record's role never depends on the others); planning uses the expected
    sizes."""
    score_clip: PositiveFloat = 2.0
    """Per-record held-out loss is clipped to [0, score_clip] before the noisy mean."""
    score_noise_multiplier: PositiveFloat = 4.0
    """Std of the noise on the held-out loss sum over the clipped loss's half-range."""
    lr: Floats = (1e-3, 2e-3, 4e-3)
    hidden: Ints = (128, 192, 256)
    depth: Ints = (2, 3)
    ema_decay: Fractions = (0.99, 0.995, 0.999)
    label_dropout: Rates = (0.1,)
    noise_draws: Ints = (4,)
    cpus_per_trial: PositiveFloat = 1.0


class DistributedConfig(Section):
    """Where stage 1's DP-SGD runs. `ray` (the default): a Ray Train worker group, on a local
    in-process Ray unless `address` names a cluster (`auto`, `ray://host:10001`, `host:6379`).
    `local`: the in-process core without Ray (e.g. a GPU machine where Ray is absent)."""

    backend: Literal["ray", "local"] = "ray"
    address: str | None = None
    num_workers: PositiveInt = 1
    cpus_per_worker: PositiveInt | None = None
    """CPUs (and torch threads) per DP-SGD worker. Default: on the embedded local Ray, this
    machine's cores shared among the workers (one worker gets them all); on a cluster, 1."""
    use_gpu: bool = False
    max_failures: Annotated[int, Field(ge=-1), NoBool] = 2
    """Worker failures Ray Train recovers from, each from the latest checkpoint (-1 = always)."""
    checkpoint_every: PositiveInt = 50
    """DP-SGD steps between checkpoints (the last step is always checkpointed)."""
    storage_path: str | None = None
    """Ray Train checkpoints (a local dir or s3:// URI); default `<out>/ray`."""


class EvalConfig(Section):
    """Custodian-side evaluation of the synthetic data against the real splits."""

    synthetic_count: Annotated[int, Field(ge=20), NoBool] = 10000
    classifier_epochs: Int = 5
    evaluator_epochs: Int = 3
    inception_weights: str | None = None
    inception_sha256: str | None = None
    enabled: bool = False
    """Opt-in: evaluation reads the real train/test splits without noise; its metrics go to the
    custodian part only (custodian/report.json, evaluation.json), never to the release."""


class RunConfig(Section):
    """One run: the data set, the guarantee and every stage's settings."""

    dataset: str = "mnist"
    """The ledger's name: a built-in (read from data_dir) or your `data`'s (default: its path)."""
    data_dir: str = "../shared/datasets"
    data: str | None = None
    data_test: str | None = None
    """Your images, and a real test split of them for the evaluation only (tdpdm.data.inputs)."""
    image_size: Annotated[int, Field(ge=8, le=512), NoBool] = 28
    classes: Annotated[tuple[str, ...], AsList] | None = None
    """Declared public (default: the folder or ClassLabel names); `channels`: 1 grey, 3 RGB."""
    channels: Literal[1, 3] | None = None
    privacy_unit: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """Guarantee per unit (tdpdm.data.units): a Parquet column, an .npz array, `folder:1`."""
    records_per_unit: Annotated[int, Field(ge=1, le=10000), NoBool] = 1
    download: bool = False
    mode: Mode = "private"
    epsilon: Annotated[Float, AfterValidator(_positive_finite)] = 10.0
    """The run's target epsilon (NaN and infinities are refused like everywhere)."""
    delta: Fraction = 1e-5
    subset: Annotated[int, Field(ge=2), NoBool] | None = 10000
    """Expected number of training records (a secret Poisson draw); None = all."""
    seed: Int = 0
    device: Annotated[str, AfterValidator(_device)] = "cpu"
    ledger: str = "runs/ledger.json"
    out: str = "runs/latest"
    cache_dir: str = ".tdpdm-cache"
    job_id: str | None = None
    metrics_port: Int | None = None
    progress: bool = True
    custodian_losses: bool = False
    """Opt-in: training losses (unnoised statistics of private records) on the progress bar,
    telemetry and custodian/report.json; the report lists them as not covered."""
    stage1: Stage1Config = Stage1Config()
    release: ReleaseConfig = ReleaseConfig()
    stage2: Stage2Config = Stage2Config()
    evaluation: EvalConfig = EvalConfig()
    distributed: DistributedConfig = DistributedConfig()
    tune: TuneConfig = TuneConfig()

    @field_validator(
        "stage1", "release", "stage2", "evaluation", "distributed", "tune", mode="before"
    )
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        """`stage2:` with nothing under it (YAML null) means the defaults."""
        return {} if value is None else value

    _name_the_data = model_validator(mode="before")(default_name)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        """Rules that span sections (the messages carry the whole line: no single key)."""
        if problem := selection_problem(self):
            raise ValueError(problem)
        if self.stage1.mechanism == "lipschitz-vae" and self.mode != "released":
            raise ValueError(
                "stage1.mechanism lipschitz-vae is a per-record release of the latents: it "
                f"needs mode: released, not {self.mode!r}"
            )
        if self.tune.trials and self.mode == "private" and self.stage2.private_model != "diffusion":
            raise ValueError(
                "tune.trials searches the diffusion model: set stage2.private_model: diffusion "
                "(or tune.trials: 0)"
            )
        searches_a_mixture = self.tune.trials and self.stage2.released_model != "diffusion"
        if searches_a_mixture and self.mode == "released":
            raise ValueError(
                "tune.trials searches the diffusion model: set stage2.released_model: diffusion "
                "(or tune.trials: 0)"
            )
        d = self.distributed
        if d.backend == "local" and (d.num_workers != 1 or d.address):
            raise ValueError(
                "distributed.backend local runs one in-process worker: set backend: ray for "
                "num_workers > 1 or an address"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples), as the report's `config` section carries it."""
        return self.model_dump(mode="json")


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
    return validated(RunConfig, data)
