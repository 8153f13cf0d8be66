"""The guarantee in words: what a run's epsilon covers, what it does not, and where each output
sits (release or custodian part). One place, so the report, the Parquet stamp and the README
say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdpdm.privacy.accountant import EpsilonBound
from tdpdm.privacy.events import Event, event_to_dict
from tdpdm.privacy.units import UnitBound
from tdpdm.report.text import epsilon_text

RANDOMNESS = (
    "mechanism randomness (sampling masks, DP noise, release and score noise, subset and "
    "held-out draws) came from fresh OS entropy, one secret key per mechanism, never from the "
    "published seed; no generator state was written to the release part"
)


def covered_outputs(mode: str, mechanism: str) -> list[str]:
    covered = ["the encoder/decoder weights", "the stage-2 model", "the synthetic data set"]
    if mode == "released":
        covered.insert(1, "the released latents (release/latents/latents.parquet)")
    if mechanism == "lipschitz-vae":
        covered[:2] = [
            "the VAE encoder/decoder weights (trained on the private records with DP-SGD; no "
            "public data set was used)",
            "the released latents and labels (release/latents/latents.parquet): one Gaussian "
            "release per record of [mu(x), scaled one-hot label], mu the encoder mean with a "
            "proven Lipschitz bound L (exact product of its layers' spectral norms, checked on "
            "data; only pass/fail of the check is published), sensitivity sqrt((D L)^2 + 2 b^2) "
            "with D = sqrt(C*H*W) the diameter of the pixel cube [0, 1]^(C*H*W), from the image "
            "shape alone (the latents section gives D as input_diameter)",
        ]
    return covered


def not_covered(
    mode: str,
    *,
    evaluated: bool,
    custodian_losses: bool,
    subset: int | None,
    own_data: bool = False,
) -> list[str]:
    """What the guarantee does not cover, in the order a privacy officer reads it."""
    items = []
    if mode == "private":
        items.append(
            "custodian/latents/latents.parquet: private latents are a sensitive intermediate "
            "and must not leave the custodian"
        )
    else:
        items.append(
            "the release is DP only under replace-one adjacency: a record's presence (as "
            "opposed to its value) is not hidden"
        )
    items.append("the number of training records is treated as public (it sets the sampling rate)")
    if own_data:
        items.append(
            "the label set (the class names the custodian declared: --classes, the folder or "
            "ClassLabel names), the image size and the channels are treated as public metadata; "
            "labels, pixels and per-class counts stay private"
        )
    if subset is not None:
        items.append(
            f"subset: each record was kept independently with probability {subset}/N (secret "
            "draws); the guarantee is stated for every record of the data set handed in, "
            "without claiming amplification by subsampling"
        )
    if evaluated:
        items.append(
            "custodian/evaluation.json and the metrics in custodian/report.json: read the real "
            "training and test splits without noise (opted in by evaluation.enabled); "
            "custodian-only, never publish"
        )
    if custodian_losses:
        items.append(
            "training losses (unnoised statistics of private records; opted in by "
            "custodian_losses): in custodian/report.json, the progress bar and telemetry"
        )
    items.append(
        "custodian/work/: DP-SGD checkpoints hold secret generator state; deleted when the run "
        "succeeds, kept private otherwise"
    )
    items.append(
        "noise is drawn with torch/NumPy generators keyed from OS entropy (not a CSPRNG stream; "
        "Opacus secure_mode off): floating-point side channels are out of scope"
    )
    return items


def statement(
    bound: EpsilonBound, *, n: int, dataset: str, covered: Sequence[str], adjacency_words: str
) -> str:
    unit = bound.unit if isinstance(bound, UnitBound) else None
    whom = (
        f"each privacy unit ({unit.by}) of the {n} training records of {dataset} (a unit's "
        f"records bounded to at most {unit.k} by a secret random choice)"
        if unit
        else f"each of the {n} training records of {dataset}"
    )
    return (
        f"({epsilon_text(bound.epsilon)}, {bound.delta:g})-differential privacy for {whom}, "
        "with neighbouring data sets differing by "
        f"{adjacency_words}. Covered: {', '.join(covered)}; anything computed from them alone is "
        f"post-processing and covered too. Randomness: {RANDOMNESS}."
    )


def parquet_guarantee(privacy: dict[str, Any], run_id: str, dataset: str) -> dict[str, Any]:
    keys = ("epsilon", "delta", "adjacency", "accountant", "events", "statement", "unit")
    stamp = {k: privacy[k] for k in keys if k in privacy}  # `unit`: per privacy unit only
    return stamp | {"run_id": run_id, "dataset": dataset}


def events_as_dicts(events: Sequence[Event]) -> list[dict[str, Any]]:
    return [event_to_dict(e) for e in events]


def privacy_section(
    bound: EpsilonBound,
    events: Sequence[Event],
    *,
    budget: dict[str, Any],
    spent_epsilon: float,
    target_epsilon: float,
    charge_id: str | None,
    ledger: str,
    dataset: str,
    n_records: int,
    mode: str,
    mechanism: str,
    evaluated: bool,
    custodian_losses: bool,
    subset: int | None,
    own_data: bool = False,
) -> dict[str, Any]:
    """The report's `privacy` section: the bound, what ran, and what it covers, in words.
    Per privacy unit (`bound` a `UnitBound`), the epsilon is the unit-level one, and `unit`
    holds the unit, k and the accountant's record-level figures it was converted from."""
    unit = bound.unit if isinstance(bound, UnitBound) else None
    words = unit.in_words() if unit else bound.adjacency.in_words()
    extra = {"unit": unit_section(bound)} if isinstance(bound, UnitBound) and unit else {}
    return extra | {
        "epsilon": bound.epsilon,
        "delta": bound.delta,
        "adjacency": bound.adjacency.value,
        "adjacency_words": words,
        "accountant": bound.accountant,
        "target_epsilon": target_epsilon,
        "events": events_as_dicts(events),
        "budget": budget | {"spent_epsilon_after_run": spent_epsilon},
        "charge_id": charge_id,
        "ledger": ledger,
        "statement": statement(
            bound,
            n=n_records,
            dataset=dataset,
            covered=covered_outputs(mode, mechanism),
            adjacency_words=words,
        ),
        "randomness": RANDOMNESS,
        "not_covered": not_covered(
            mode,
            evaluated=evaluated,
            custodian_losses=custodian_losses,
            subset=subset,
            own_data=own_data,
        )
        + ([UNIT_NOT_COVERED] if unit else []),
    }


UNIT_NOT_COVERED = (
    "privacy unit: which records belong to which unit and how many each unit has stay private "
    "(read under the charge); the guarantee per unit is group privacy over the k records kept "
    "per unit, and the record count before bounding is treated as public"
)


def unit_section(bound: UnitBound) -> dict[str, Any]:
    """The unit, k, the relation, and the record-level bound the unit-level one came from."""
    assert bound.unit is not None
    return bound.unit.as_dict() | {
        "adjacency_words": bound.unit.in_words(),
        "record_epsilon": bound.record_epsilon,
        "record_delta": bound.record_delta,
        "conversion": "group privacy: (k eps_r, k exp((k-1) eps_r) delta_r) per unit of k records",
    }
