"""Connecting to Ray: a cluster when RAY_ADDRESS / ray.address says so, else a local Ray started in-process."""
from __future__ import annotations

import os
import socket
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


# Where a Ray process sends state API queries (ray.util.state; Ray Train's placement-group cleaner): checked
# before RAY_ADDRESS and before auto-detecting "the" Ray of the machine.
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def worker_env(use_gpu: bool) -> dict[str, str]:
    env = dict(WORKER_ENV)
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    for key in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "TORCH_EXTENSIONS_DIR", "S2GR_EVAL_KEEP_BYTES",
                "S2GR_TEST_KILL_AT_STEP", "S2GR_TEST_KILL_MARKER", "S2GR_TEST_RECORD_ROWS"):
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
    if address:
        log(f"ray: connecting to {address}")
        ray.init(address=address, runtime_env={"env_vars": worker_env(use_gpu)}, log_to_driver=True)
        return
    log("ray: starting a local Ray in this process (set RAY_ADDRESS or ray.address=... to use a cluster)")
    start_local_ray(cfg, use_gpu, log)


DEFAULT_DASHBOARD_PORT = 8265
NO_DASHBOARD_PORT = 1  # privileged and never chosen by Ray: nothing answers there


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(cfg: RayConfig, use_gpu: bool = False, log: Callable[[str], None] = print,
                    dashboard_port: int | None = None) -> str:
    """Start a local Ray in this process with its own dashboard, and point every worker's state API at it.

    Ray Train runs a placement-group cleaner beside each run that polls the state API (served by the dashboard)
    for the run's controller and removes the run's placement group, killing its workers, when the answer is "no
    such actor". A worker finds "its" dashboard by auto-detection, which can land on another Ray of the same
    machine: a cluster without a dashboard still names 127.0.0.1:8265, so any other Ray serving that port ends the
    run within a second. RAY_API_SERVER_ADDRESS, set for every worker, names this cluster's own dashboard instead.
    `dashboard_port`: None = 8265 when free, else a free port. Returns the dashboard's URL. When `ray start` has
    recorded a running Ray on this machine (under `ray.temp_dir`, else Ray's default temp dir), the run joins it
    by that address instead; its workers find its dashboard through the same record.
    """
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    temp_dir = os.path.abspath(cfg.temp_dir) if cfg.temp_dir else None
    running = canonicalize_bootstrap_address(None, temp_dir)
    if running:  # the Ray `ray start` recorded on this machine: join it; its workers find it by the same record
        ignored = f" (ray.num_cpus={cfg.num_cpus} is ignored: the cluster has its own)" if cfg.num_cpus else ""
        log(f"ray: joining the Ray started on this machine at {running} (`ray start`){ignored}")
        ctx = ray.init(address=running, runtime_env={"env_vars": worker_env(use_gpu)}, log_to_driver=True)
        return f"http://{ctx.dashboard_url}" if ctx.dashboard_url else ""
    kwargs = {}
    if cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    first = dashboard_port or (DEFAULT_DASHBOARD_PORT if _port_free(DEFAULT_DASHBOARD_PORT) else free_port())
    for port in (first, free_port(), None):  # another program may take the port between the check and Ray's bind
        # None: no dashboard (its packages missing?); the pin then names a port no Ray takes, so the cleaner's
        # queries fail (it warns once a second) instead of reaching another Ray
        url = f"http://127.0.0.1:{port or NO_DASHBOARD_PORT}"
        env = {**worker_env(use_gpu), API_SERVER_ENV: url}
        dash = {"dashboard_host": "127.0.0.1", "dashboard_port": port} if port else {"include_dashboard": False}
        ctx = ray.init(runtime_env={"env_vars": env}, log_to_driver=True, **dash, **kwargs)
        if port is None:
            log("ray: warning: no dashboard could be started on this machine; Ray Train's placement-group cleaner "
                "cannot check on the run and says so once a second (harmless)")
        elif (ctx.dashboard_url or "").rsplit(":", 1)[-1] != str(port):
            log(f"ray: the dashboard did not start on port {port} ({ctx.dashboard_url or 'none'}); starting again")
            ray.shutdown()
            continue
        else:
            log(f"ray: dashboard at {url}")
        return url
    raise AssertionError("unreachable: the last attempt starts Ray without a dashboard and returns")
