"""Shared fixtures: a prepared synthetic run directory, Beauty's location, quiet Ray settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Ray Train gives a worker group 60 s to start; a cold machine (first torch/DeepSpeed import from disk, 2 busy cores)
# can need more. The local Ray the tests start inherits this environment.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def beauty_path() -> Path | None:
    p = Path(os.environ.get("S2GR_BEAUTY_PATH", REPO.parent / "shared" / "data" / "amazon-beauty"))
    return p if (p / "sequences.txt").exists() else None


@pytest.fixture(scope="session")
def beauty() -> Path:
    p = beauty_path()
    if p is None:
        pytest.skip("Amazon Beauty not found: set S2GR_BEAUTY_PATH to the folder with sequences.txt/items.jsonl")
    return p


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """A local Ray (2 CPUs, temp dir under pytest's, its own dashboard on a free port) for one test module, started
    the way `s2gr` starts one (s2gr_ray.training.ray_env.start_local_ray); shut down after it. Yields the
    dashboard's URL."""
    import ray

    from s2gr_ray.config import RayConfig
    from s2gr_ray.training.ray_env import free_port, start_local_ray

    url = None
    if not ray.is_initialized():
        url = start_local_ray(RayConfig(num_cpus=2, temp_dir=str(tmp_path_factory.mktemp("ray"))),
                              dashboard_port=free_port())
    yield url
    ray.shutdown()


@pytest.fixture()
def one_torch_thread():
    """Tiny-tensor tests run fastest single-threaded (OpenMP spin-waits dominate on a busy 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
