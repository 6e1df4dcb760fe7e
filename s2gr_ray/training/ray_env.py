"""Connecting to Ray: a cluster when RAY_ADDRESS / ray.address says so, else a local Ray started in-process."""
from __future__ import annotations

import os
from typing import Callable

from s2gr_ray.config import RayConfig

# Environment every Ray worker of ours needs (DeepSpeed on CPU nodes, quiet tokenizers, offline models).
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    # Ray Train tees print() into its logger and stdout; plain print keeps each progress line once.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def worker_env(use_gpu: bool) -> dict[str, str]:
    env = dict(WORKER_ENV)
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    for key in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "TORCH_EXTENSIONS_DIR", "S2GR_TEST_KILL_AT_STEP",
                "S2GR_TEST_KILL_MARKER", "S2GR_TEST_RECORD_ROWS"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def cluster_address(cfg: RayConfig) -> str:
    """The Ray cluster to connect to: ray.address, else RAY_ADDRESS; "" = a local Ray in this process."""
    return cfg.address or os.environ.get("RAY_ADDRESS", "")


def init_ray(cfg: RayConfig, use_gpu: bool = False, log: Callable[[str], None] = print) -> None:
    """Start or connect to Ray once per process."""
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(cfg)
    runtime_env = {"env_vars": worker_env(use_gpu)}
    if address:
        log(f"ray: connecting to {address}")
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    kwargs = {}
    if cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    if cfg.temp_dir:
        kwargs["_temp_dir"] = os.path.abspath(cfg.temp_dir)
    log("ray: starting a local Ray in this process (set RAY_ADDRESS or ray.address=... to use a cluster)")
    # The dashboard process also serves the state API that Ray Train's placement-group cleaner polls.
    ray.init(runtime_env=runtime_env, log_to_driver=True, **kwargs)
