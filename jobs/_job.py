"""Shared by the jobs/*.py entry points: run one `s2gr` subcommand as the driver of a Ray job.

Laptop and cluster take the same code path (DESIGN.md convention 7): `python jobs/run.py ARGS` is `s2gr run ARGS`.
Inside `ray job submit`, RAY_ADDRESS is set, so s2gr_ray.training.ray_env.init_ray joins the cluster.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOBS = Path(__file__).resolve().parent

# `python jobs/tokenize.py` puts jobs/ first on sys.path, where tokenize.py would shadow the standard library's
# tokenize module (inspect, numpy.ma and others import it later). Only `_job` is imported from jobs/: drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != JOBS]


def run_cli(command: str, args: list[str]) -> int:
    """`s2gr COMMAND *args`, after the two settings a job driver needs."""
    # `ray job submit --working-dir .` unpacks the repository on the cluster and puts it on PYTHONPATH; this also
    # lets `python jobs/run.py` work from a checkout that is not pip-installed.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    # init_ray passes env_vars to ray.init (HF_HUB_OFFLINE, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, ...). When the job's
    # --runtime-env-json sets one of the same keys, Ray refuses to merge the two runtime envs ("Failed to merge the
    # Job's runtime env") unless told to combine them; the values agree, so combining is safe.
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    import s2gr_ray
    from s2gr_ray.cli import main

    where = os.environ.get("RAY_ADDRESS") or "a local Ray (RAY_ADDRESS unset)"
    print(f"[s2gr job] s2gr {command} {' '.join(args)}\n[s2gr job] code {Path(s2gr_ray.__file__).parent}, "
          f"python {sys.executable}, cluster {where}", flush=True)
    return main([command, *args])
