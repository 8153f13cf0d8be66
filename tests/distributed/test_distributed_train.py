"""Stage 1 on Ray Train is the single-process mechanism: same events, same epsilon, same model.

One Ray worker runs the very same sampling and noise as the in-process loop (the same mechanism
key, fixed here for the comparison; a run draws a fresh one), so its model must equal the local
one; two workers split the records but draw one global Poisson batch per step,
so they spend the same epsilon and reach a comparable reconstruction loss.
"""

from __future__ import annotations

import functools

import pytest
import torch
from train_support import (
    Collect,
    mean_reconstruction_loss,
    mnist_images,
    ship_to_ray_workers,
    tiny_autoencoder,
)

from tdpdm.config import DistributedConfig
from tdpdm.distributed.stage1_train import train_dpsgd_on_ray
from tdpdm.privacy.accountant import compute_epsilon
from tdpdm.privacy.adjacency import Adjacency
from tdpdm.privacy.randomness import MechanismKey
from tdpdm.stages.dpsgd import DPSGDPlan, train_dpsgd
from tdpdm.stages.encode import reconstruction_loss

N_RECORDS, BATCH, STEPS, SEED = 512, 64, 40, 3
PLAN = DPSGDPlan("stage1", 0.8, BATCH / N_RECORDS, STEPS, 1.0, BATCH)
KEY = MechanismKey("stage1-dpsgd", 0x5EC2E7)
"""One fixed (test-only) mechanism key for all runs: the comparisons need the same noise."""


@pytest.mark.slow
def test_ray_workers_spend_and_learn_like_the_single_process_run(local_ray, tmp_path):
    ship_to_ray_workers()
    images = mnist_images(N_RECORDS)
    factory = functools.partial(tiny_autoencoder, SEED)
    initial_loss = mean_reconstruction_loss(factory(), images)

    local_session = Collect()
    # One thread, as a Ray worker with one CPU runs: with two, the convolutions sum in another
    # order, and Adam turns that rounding into 1e-5 differences on near-zero gradients.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = train_dpsgd(
            factory(), [images], reconstruction_loss, PLAN, local_session,
            lr=2e-3, key=KEY, device="cpu", progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    runs = {}
    for workers in (1, 2):
        session = Collect()
        outcome = train_dpsgd_on_ray(
            factory, [images], reconstruction_loss, PLAN, session,
            cfg=DistributedConfig(num_workers=workers, checkpoint_every=15),
            storage_path=str(tmp_path / f"ray-{workers}"), lr=2e-3, key=KEY, progress=False,
        )  # fmt: skip
        assert outcome.steps == STEPS and outcome.num_workers == workers
        runs[workers] = (outcome.model, session.events)

    # Charged once, by the driver, exactly the plan: the same event and epsilon as in-process.
    for _, events in runs.values():
        assert events == local_session.events == [PLAN.event()]
    eps = {
        w: compute_epsilon(events, 1e-5, Adjacency.ADD_REMOVE).epsilon
        for w, (_, events) in runs.items()
    }
    local_eps = compute_epsilon(local_session.events, 1e-5, Adjacency.ADD_REMOVE).epsilon
    assert eps[1] == eps[2] == local_eps

    # One worker: the same Poisson batches and the same noise as the in-process loop.
    for name, p in runs[1][0].state_dict().items():
        torch.testing.assert_close(p, local.state_dict()[name], rtol=1e-4, atol=1e-6)

    # Two workers: a different draw of the same mechanism; it learns as much.
    local_loss = mean_reconstruction_loss(local, images)
    two_loss = mean_reconstruction_loss(runs[2][0], images)
    assert local_loss < initial_loss - 0.05
    assert two_loss < initial_loss - 0.05
    assert abs(two_loss - local_loss) < 0.25 * (initial_loss - local_loss)


def test_cpus_per_worker_shares_the_embedded_ray_and_asks_one_of_a_cluster(monkeypatch):
    """One worker on the embedded Ray gets every core (its torch threads follow); a cluster
    job asks for 1 CPU a worker unless `distributed.cpus_per_worker` says otherwise."""
    from tdpdm.config import DistributedConfig
    from tdpdm.distributed.stage1_train import cpus_per_worker

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cpus_per_worker(DistributedConfig(), 2.0) == 2
    assert cpus_per_worker(DistributedConfig(num_workers=2), 2.0) == 1
    assert cpus_per_worker(DistributedConfig(num_workers=3), 2.0) == 1
    assert cpus_per_worker(DistributedConfig(num_workers=2), 16.0) == 8
    assert cpus_per_worker(DistributedConfig(address="auto"), 64.0) == 1
    assert cpus_per_worker(DistributedConfig(address="auto", cpus_per_worker=4), 64.0) == 4
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert cpus_per_worker(DistributedConfig(), 64.0) == 1
