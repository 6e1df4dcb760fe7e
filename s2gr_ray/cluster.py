"""Offline checks of a Ray cluster launcher YAML (cluster.yaml), for `ray up` (GitHub issue 7).

`ray up` has no dry run, so a typo surfaces only once it talks to the cloud. `validate_cluster_yaml` runs the two
offline steps of `ray up`'s config bootstrap — Ray's autoscaler `prepare_config` (merge the provider's defaults)
and `validate_config` (JSON schema, node types) — without the cloud calls between and after them (resource
autodetection, IAM/VPC setup), and then checks the layout this project expects:

  * the head gives Ray no CPUs (`resources: {"CPU": 0}` or `--num-cpus=0` in head_start_ray_commands), so no
    training, Ray Data or Tune work lands on it;
  * at least one worker type declares GPUs and has `min_workers: 0`, so GPU nodes exist only while training
    asks for them (train.use_gpu=true makes Ray Train request {"GPU": ...} bundles);
  * at least one worker type offers CPUs without GPUs (Ray Data, Tune trial drivers).

    python -m s2gr_ray.cluster cluster.yaml     # prints OK and the node types, or the problem; exit 1

`job_runtime_env` is the runtime env jobs/README.md submits with: the repository as working dir, minus the
virtual environment, git history and run outputs.

Ray's helpers are private (ray.autoscaler._private.util): they are wrapped here, in one tested place.
"""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml


# Paths `ray job submit --working-dir .` must not upload (gitignore-style patterns, as Ray's "excludes").
JOB_EXCLUDES = (".venv", ".git", "runs", "**/__pycache__", ".pytest_cache", "*.egg-info")


def job_runtime_env(env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """Runtime env for `ray job submit --working-dir . --runtime-env-json ...` (see jobs/README.md).

    The nodes already hold pyproject's dependencies (cluster.yaml's setup_commands); only the code travels.
    """
    env: dict[str, Any] = {"excludes": list(JOB_EXCLUDES)}
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


class ClusterConfigError(ValueError):
    """cluster.yaml is not a valid Ray cluster config, or lacks the layout s2gr_ray expects."""


def _where(path: Any) -> str:
    keys = [str(k) for k in path]
    return ".".join(keys) if keys else "(top level)"


def _ray_checks(raw: dict, source: str) -> dict:
    """Ray's own preparation + validation; every failure becomes a ClusterConfigError naming the key."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(raw))
    except NotImplementedError as exc:  # unknown provider.type
        raise ClusterConfigError(f"{source}: provider: {exc}") from None
    except KeyError as exc:
        raise ClusterConfigError(f"{source}: missing key {exc} (Ray's defaults could not be merged)") from None
    except (ValueError, AssertionError) as exc:
        raise ClusterConfigError(f"{source}: {exc}") from None
    try:
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        raise ClusterConfigError(f"{source}: {_where(exc.absolute_path)}: {exc.message} "
                                 "(Ray's cluster schema: ray/autoscaler/ray-schema.json)") from None
    except (ValueError, RuntimeError) as exc:
        raise ClusterConfigError(f"{source}: {exc}") from None
    return prepared


def _head_has_no_cpus(cfg: dict) -> bool:
    head = cfg["available_node_types"][cfg["head_node_type"]]
    if head.get("resources", {}).get("CPU") == 0:
        return True
    starts = " ".join(cfg.get("head_start_ray_commands", []))
    return re.search(r"--num-cpus[= ]0(\s|$)", starts) is not None


def check_layout(cfg: dict, source: str = "cluster.yaml") -> None:
    """The s2gr_ray expectations above, on a config that Ray's checks already accepted."""
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    workers = {name: t for name, t in types.items() if name != head}
    if not _head_has_no_cpus(cfg):
        raise ClusterConfigError(
            f"{source}: available_node_types.{head} (the head) offers CPUs to Ray, so training and Ray Data "
            'could be scheduled there; set its resources: {"CPU": 0} (and --num-cpus=0 in head_start_ray_commands)')
    gpu = {n: t for n, t in workers.items() if t.get("resources", {}).get("GPU", 0) > 0}
    if not gpu:
        raise ClusterConfigError(
            f"{source}: no worker type declares GPUs; add one with resources: {{\"CPU\": 4, \"GPU\": 1}} "
            "(declared explicitly: the autoscaler must know the type offers GPUs) and min_workers: 0")
    always_on = [n for n, t in gpu.items() if t.get("min_workers", 0) != 0]
    if len(always_on) == len(gpu):
        raise ClusterConfigError(
            f"{source}: available_node_types.{always_on[0]}.min_workers = {gpu[always_on[0]]['min_workers']}: "
            "GPU workers should start on demand; set min_workers: 0 so the autoscaler adds them when training "
            "asks for GPUs and removes them after idle_timeout_minutes")
    if not any(n not in always_on and t.get("max_workers", 0) > 0 for n, t in gpu.items()):
        raise ClusterConfigError(f"{source}: every GPU worker type has max_workers 0; the autoscaler could never "
                                 "add one")
    if not any(t.get("resources", {}).get("CPU", 0) > 0 and not t.get("resources", {}).get("GPU", 0)
               for t in workers.values()):
        raise ClusterConfigError(
            f"{source}: no CPU-only worker type; add one (e.g. cpu_worker with resources: {{\"CPU\": 8}}) for Ray "
            "Data and Tune trial drivers, since the head offers no CPUs")


def validate_cluster_yaml(path: str | Path, layout: bool = True) -> dict:
    """Check `path` like `ray up` would before launching anything; return Ray's prepared config.

    layout=False skips the s2gr_ray layout checks (Ray's checks only).
    Raises ClusterConfigError naming the file, the key and what to change.
    """
    path = Path(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ClusterConfigError(f"{source}: no such file") from None
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{source}: expected a mapping of cluster settings, got {type(raw).__name__}")
    for key in ("provider", "available_node_types", "head_node_type"):
        if key not in raw:
            raise ClusterConfigError(f"{source}: missing top-level key {key!r}")
    if not isinstance(raw["provider"], dict) or "type" not in raw["provider"]:
        raise ClusterConfigError(f"{source}: provider.type is missing (aws, gcp, azure, kuberay, local, ...)")
    types = raw["available_node_types"]
    if not isinstance(types, dict) or raw["head_node_type"] not in types:
        names = ", ".join(types) if isinstance(types, dict) else "none"
        raise ClusterConfigError(f"{source}: head_node_type {raw['head_node_type']!r} is not one of "
                                 f"available_node_types ({names})")
    prepared = _ray_checks(raw, source)
    if layout:
        check_layout(prepared, source)
    return prepared


def summary(cfg: dict) -> str:
    """One line per node type: resources and worker bounds."""
    lines = [f"cluster {cfg.get('cluster_name')!r} on {cfg['provider']['type']}, max_workers {cfg['max_workers']}, "
             f"idle_timeout_minutes {cfg.get('idle_timeout_minutes')}"]
    for name, t in cfg["available_node_types"].items():
        role = "head" if name == cfg["head_node_type"] else f"workers {t.get('min_workers', 0)}..{t.get('max_workers')}"
        lines.append(f"  {name}: {role}, resources {t.get('resources', {})}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m s2gr_ray.cluster CLUSTER_YAML   (validate a Ray cluster launcher config offline)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        cfg = validate_cluster_yaml(args[0])
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary(cfg))
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
