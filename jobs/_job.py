"""Shared by the jobs/*.py entry points: run one `s2gr` subcommand as the driver of a Ray job.

Laptop and cluster take the same code path (DESIGN.md convention 7): `python jobs/run.py ARGS` is `s2gr run ARGS`.
Inside `ray job submit`, RAY_ADDRESS is set, so s2gr_ray.training.ray_env.init_ray joins the cluster.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOBS = Path(__file__).resolve().parent

# `python jobs/tokenize.py` puts jobs/ first on sys.path, where tokenize.py would shadow the standard library's
# tokenize module (inspect, numpy.ma and others import it later). Only `_job` is imported from jobs/: drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != JOBS]


# arguments whose relative paths would land in the job's temporary copy of --working-dir
OUTPUT_KEYS = ("train.storage_path",)


def lost_outputs(args: list[str], environ=os.environ, cwd: Path | None = None) -> list[str]:
    """The command-line arguments that would write into the job's temporary working directory: inside `ray job
    submit --working-dir`, the driver starts in Ray's unpacked copy of that folder
    (/tmp/ray/session_*/runtime_resources/working_dir_files/...), which Ray deletes later, so a relative --out or
    train.storage_path= is lost with it. Empty outside such a job, and when the entry point has changed to another
    folder (`cd /mnt/shared && python jobs/train.py ...`)."""
    try:
        job = json.loads(environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "") or "{}")
    except json.JSONDecodeError:
        return []
    if not (job.get("runtime_env") or {}).get("working_dir"):
        return []
    if "runtime_resources" not in (cwd or Path.cwd()).parts:
        return []
    found = []
    for i, arg in enumerate(args):
        if arg == "--out" and i + 1 < len(args):
            name, value = "--out", args[i + 1]
        elif arg.startswith("--out="):
            name, value = "--out", arg.split("=", 1)[1]
        elif arg.split("=", 1)[0] in OUTPUT_KEYS and "=" in arg:
            name, value = arg.split("=", 1)
        else:
            continue
        if _relative(value):
            found.append(f"{name} {value}")
    if not any(a.split("=", 1)[0] in OUTPUT_KEYS for a in args):
        found += _preset_outputs(args, cwd or Path.cwd())
    return found


def _preset_outputs(args: list[str], cwd: Path) -> list[str]:
    """The relative OUTPUT_KEYS that the command's preset (its first *.yaml argument, `base:` chain included) sets.
    A preset that does not load is left to the command, which names what is wrong with it."""
    presets = [a for a in args if not a.startswith("-") and "=" not in a and a.endswith((".yaml", ".yml"))]
    if not presets or not (cwd / presets[0]).is_file():
        return []
    from s2gr_ray.config import flatten, load_config

    try:
        flat = flatten(load_config(str(cwd / presets[0]), []))
    except Exception:  # noqa: BLE001 - any load error is reported by the command itself
        return []
    return [f"{key} {flat[key]} (in {presets[0]})" for key in OUTPUT_KEYS if _relative(str(flat.get(key) or ""))]


def _relative(value: str) -> bool:
    """A non-empty local path that is not absolute (URIs such as s3://... are not local)."""
    return bool(value) and "://" not in value and not Path(value).is_absolute()


def run_cli(command: str, args: list[str]) -> int:
    """`s2gr COMMAND *args`, after the two settings a job driver needs."""
    # `ray job submit --working-dir .` unpacks the repository on the cluster and puts it on PYTHONPATH; this also
    # lets `python jobs/run.py` work from a checkout that is not pip-installed (lost_outputs reads presets with it).
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    lost = lost_outputs(args)
    if lost:
        print(f"s2gr {command} (Ray job): {', '.join(lost)} is relative: inside `ray job submit --working-dir` it "
              f"would be written into the job's temporary copy of the working directory ({os.getcwd()}), which Ray "
              "deletes; pass an absolute path on storage every node and you can reach (e.g. --out /mnt/shared/runs/x)",
              file=sys.stderr)
        return 2
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
