"""Issue 11, findings 1, 3 and 4: mechanism randomness is secret, fresh, independent per
mechanism, and per-record roles never depend on other records.

Each test states the old behaviour it would have caught.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from mechanism_keys import seed_derived_key

from tdpdm.config import ReleaseConfig
from tdpdm.privacy.events import GaussianEvent, PoissonGaussianEvent
from tdpdm.privacy.randomness import MechanismKey, bernoulli_roles, uniform_shards
from tdpdm.stages.dpsgd import DPSGDPlan, PoissonBatches, train_dpsgd
from tdpdm.stages.release import release_latents

SEED = 0  # the published seed (report.json's default)


class _Tally:
    def __init__(self) -> None:
        self.events: list = []

    def record(self, event) -> None:
        self.events.append(event)


def _clean_vectors(n: int = 2000, d: int = 8, classes: int = 10):
    rng = np.random.default_rng(1)
    return np.tanh(rng.normal(size=(n, d))).astype(np.float32), rng.integers(0, classes, n)


def _release(latents, labels, sigma: float = 0.6):
    cfg = ReleaseConfig()
    return release_latents(
        latents,
        labels,
        num_classes=10,
        cfg=cfg,
        event=GaussianEvent(sigma, stage="release"),
        session=_Tally(),
        key=MechanismKey.fresh("release"),
    )


def _replay_labels(released, latents, labels, seed: int) -> np.ndarray:
    """The outsider of finding 1: knows the published seed and the code, regenerates the release
    noise as if keys came from the seed, subtracts it and reads every label back."""
    from tdpdm.stages.release import release_noise, release_scales

    cfg = ReleaseConfig()
    _, label_scale = release_scales(latents.shape[1], cfg)
    std = 0.6 * cfg.clip_norm
    shape = (len(latents), latents.shape[1] + 10)
    guess = MechanismKey("release", seed_derived_key(seed, "release"))
    noise = release_noise(guess, shape, std)
    label_part = released.label_vectors * label_scale - noise[:, latents.shape[1] :]
    return label_part.argmax(axis=1)


def test_mechanism_key_is_fresh_and_never_printed():
    a, b = MechanismKey.fresh("release"), MechanismKey.fresh("release")
    assert a != b
    assert str(a._key) not in repr(a) and "secret" in repr(a)
    assert pickle.loads(pickle.dumps(a)) == a  # Ray ships it to workers in memory
    assert not np.array_equal(a.numpy().random(8), b.numpy().random(8))
    # children are independent streams, and differ from the parent
    assert not np.array_equal(a.child(0).numpy().random(8), a.child(1).numpy().random(8))
    assert not np.array_equal(a.child(0).numpy().random(8), a.numpy().random(8))


def test_same_seed_releases_differ():
    """Old code: noise = default_rng(SeedSequence([seed, const])) -> identical releases."""
    latents, labels = _clean_vectors()
    first, second = _release(latents, labels), _release(latents, labels)
    assert not np.allclose(first.latents, second.latents)
    assert not np.allclose(first.label_vectors, second.label_vectors)


def test_replay_adversary_at_chance_with_fresh_keys():
    """Old code: the replay recovered all 2,000 labels exactly from the release and the seed."""
    latents, labels = _clean_vectors()
    released = _release(latents, labels)
    recovered = (_replay_labels(released, latents, labels, SEED) == labels).mean()
    naive = (released.labels == labels).mean()  # what the noise lets through to anyone
    print(f"replay adversary: {recovered:.3f} of labels vs {naive:.3f} from the release alone")
    assert recovered <= naive + 0.05  # the replay adds nothing over reading the release


def test_replay_adversary_wins_when_keys_come_from_the_seed(seed_derived_mechanism_keys):
    """Positive control: with the old flaw reinstated (test-only fixture), the same adversary
    recovers every label exactly. Without this, the test above could pass vacuously."""
    seed_derived_mechanism_keys(SEED)
    latents, labels = _clean_vectors()
    released = _release(latents, labels)
    assert (_replay_labels(released, latents, labels, SEED) == labels).mean() == 1.0


def _tiny_dpsgd(key: MechanismKey, steps: int = 5, global_seed: int = 0) -> torch.Tensor:
    torch.manual_seed(SEED)  # public, identical initial weights
    model = torch.nn.Linear(4, 1)
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(2))
    plan = DPSGDPlan("encoder", 1.0, 0.2, steps, 1.0, 40)
    torch.manual_seed(global_seed)  # whatever the caller's global generator holds

    def loss(m, batch):  # with randomness of its own, like the diffusion loss's timesteps
        jitter = 0.1 * torch.randn(len(batch[0]))
        return (m(batch[0]).squeeze(1) + jitter - 1.0) ** 2

    train_dpsgd(model, [x], loss, plan, _Tally(), lr=0.1, key=key, device="cpu", progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_seed_dpsgd_runs_differ():
    """Old code: masks and noise from seed and seed + 1 -> the weights were a deterministic
    function of the data."""
    assert not torch.allclose(
        _tiny_dpsgd(MechanismKey.fresh("stage1-dpsgd")),
        _tiny_dpsgd(MechanismKey.fresh("stage1-dpsgd")),
    )


def test_fixture_keys_make_dpsgd_repeatable(fixed_mechanism_keys):
    """Repeatability exists only through the in-process test fixture (resume tests need it)."""
    first = _tiny_dpsgd(MechanismKey.fresh("stage1-dpsgd"))
    torch.manual_seed(123)  # the caller's global generator must not matter either
    again = _tiny_dpsgd(MechanismKey("stage1-dpsgd", MechanismKey.fresh("x")._key))
    assert not torch.allclose(first, again)  # different key, different run
    fixed = MechanismKey("k", 12345)
    assert torch.equal(_tiny_dpsgd(fixed), _tiny_dpsgd(fixed))


def test_stage_masks_are_uncorrelated():
    """Old code: both stages called PoissonBatches(seed=cfg.seed) on the same records, so their
    masks were nested (identical at equal rates) and PRV composition undercounted."""
    n, rate, steps = 20000, 0.1, 5
    s1 = PoissonBatches(n, rate, key=MechanismKey.fresh("stage1-dpsgd"))
    s2 = PoissonBatches(n, rate, key=MechanismKey.fresh("stage2-dpsgd"))
    correlations = []
    for _ in range(steps):
        m1, m2 = np.zeros(n), np.zeros(n)
        m1[s1.next_batch().numpy()] = 1
        m2[s2.next_batch().numpy()] = 1
        correlations.append(np.corrcoef(m1, m2)[0, 1])
    # independent masks: r ~ N(0, 1/n), |r| < 0.03 is > 4 standard deviations
    assert max(abs(c) for c in correlations) < 0.03
    same = PoissonBatches(n, rate, key=MechanismKey("k", 7)).next_batch()
    again = PoissonBatches(n, rate, key=MechanismKey("k", 7)).next_batch()
    assert torch.equal(same, again)  # control: the same key does couple them


def test_dpsgd_noise_does_not_follow_the_global_seed():
    """The loss's own randomness runs on the secret stream, and the caller's global generator
    is restored afterwards (so public sampling later stays reproducible)."""
    key = MechanismKey("k", 99)
    a = _tiny_dpsgd(key, global_seed=1)
    state_after = torch.random.get_rng_state()
    torch.manual_seed(1)
    expected = torch.random.get_rng_state()
    b = _tiny_dpsgd(key, global_seed=2)
    assert torch.equal(a, b)  # the loss's randomness came from the key, not the global seed
    assert torch.equal(state_after, expected)  # and the caller's generator was restored


@pytest.mark.parametrize("draw", ["bernoulli", "shards"])
def test_adding_a_record_leaves_every_other_role_unchanged(draw):
    """Old code: a seeded permutation of n positions; adding one record moved ~15 % of the
    others between the Tune train and held-out sets (n = 10,000)."""
    key = MechanismKey("roles", 2024)
    n = 10_000
    if draw == "bernoulli":
        before, after = bernoulli_roles(key, n, 0.15), bernoulli_roles(key, n + 1, 0.15)
        assert abs(before.mean() - 0.15) < 0.02
    else:
        before, after = uniform_shards(key, n, 3), uniform_shards(key, n + 1, 3)
        assert set(np.unique(before)) == {0, 1, 2}
    assert np.array_equal(before, after[:n])


def test_rank_shares_do_not_move_when_a_record_is_added():
    """Each record's rank is its own draw: DP-SGD's per-rank shares stay put (old code split a
    seeded permutation of n among the ranks)."""
    key = MechanismKey("stage1-dpsgd", 5)
    shares_n = [
        set(PoissonBatches(999, 0.1, key=key, rank=r, world=2).indices.tolist()) for r in (0, 1)
    ]
    shares_n1 = [
        set(PoissonBatches(1000, 0.1, key=key, rank=r, world=2).indices.tolist()) for r in (0, 1)
    ]
    assert shares_n[0] | shares_n[1] == set(range(999))
    assert not shares_n[0] & shares_n[1]
    for r in (0, 1):
        assert shares_n1[r] - {999} == shares_n[r]


def test_release_event_is_recorded_once():
    latents, labels = _clean_vectors(50)
    tally = _Tally()
    release_latents(
        latents,
        labels,
        num_classes=10,
        cfg=ReleaseConfig(),
        event=GaussianEvent(1.0, stage="release"),
        session=tally,
        key=MechanismKey.fresh("release"),
    )
    assert tally.events == [GaussianEvent(1.0, stage="release")]
    assert not any(isinstance(e, PoissonGaussianEvent) for e in tally.events)
