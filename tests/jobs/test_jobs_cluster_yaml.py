"""cluster.yaml passes Ray's own autoscaler validation and our layout checks; broken copies fail clearly."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from s2gr_ray.cluster import ClusterConfigError, validate_cluster_yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def broken(tmp_path: Path, raw: dict, change: Callable[[dict], object]) -> Path:
    cfg = copy.deepcopy(raw)
    change(cfg)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_cluster_yaml_is_valid_for_ray_and_for_us():
    cfg = validate_cluster_yaml(CLUSTER_YAML)
    types = cfg["available_node_types"]
    assert cfg["provider"]["type"] == "aws" and cfg["idle_timeout_minutes"] > 0
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["cpu_worker"]["resources"]["CPU"] > 0 and "GPU" not in types["cpu_worker"]["resources"]
    # Ray's defaults were merged (prepare_config) and the head start keeps training off the head.
    assert cfg["head_setup_commands"][: len(cfg["setup_commands"])] == cfg["setup_commands"]
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    # GPU nodes install the CUDA build of the pinned torch, then the project at pyproject's versions.
    gpu_setup = " ".join(types["gpu_worker"]["worker_setup_commands"])
    assert "torch==2.13.0" in gpu_setup and "download.pytorch.org/whl/cu" in gpu_setup
    assert gpu_setup.rstrip().endswith("pip install --no-cache-dir -e ~/s2gr_ray")
    assert "torch==2.13.0" in (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize("change, message", [
    # Ray's schema: an unknown (misspelt) key, at the top level and inside a node type.
    (lambda c: c.update(idle_timout_minutes=3), "'idle_timout_minutes' was unexpected"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0),
     "available_node_types.gpu_worker: Additional properties are not allowed ('min_worker' was unexpected)"),
    (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
     "available_node_types.gpu_worker.resources.GPU: 0.5 is not of type 'integer'"),
    # A node type that is referenced but not defined.
    (lambda c: c.update(head_node_type="ray.head.default"),
     "head_node_type 'ray.head.default' is not one of available_node_types (head, cpu_worker, gpu_worker)"),
    (lambda c: c["provider"].update(type="nocloud"), "Unsupported node provider: nocloud"),
    (lambda c: c["available_node_types"]["cpu_worker"].update(min_workers=50), "max_workers` is smaller"),
    # Our layout.
    (lambda c: (c["available_node_types"]["head"].update(resources={}),
                c.update(head_start_ray_commands=["ray start --head --port=6379"])), "the head) offers CPUs"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=1),
     "gpu_worker.min_workers = 1: GPU workers should start on demand"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(resources={"CPU": 4}), "no worker type declares GPUs"),
    (lambda c: c["available_node_types"].pop("cpu_worker"), "no CPU-only worker type"),
], ids=["unknown-key", "unknown-node-type-key", "fractional-gpu", "missing-head-type", "unknown-provider",
        "min-over-max", "head-cpus", "gpu-always-on", "no-gpu-type", "no-cpu-type"])
def test_broken_copy_fails_naming_the_problem(tmp_path, raw, change, message):
    path = broken(tmp_path, raw, change)
    with pytest.raises(ClusterConfigError) as err:
        validate_cluster_yaml(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_layout_checks_can_be_skipped(tmp_path, raw):
    path = broken(tmp_path, raw, lambda c: c["available_node_types"].pop("cpu_worker"))
    assert "gpu_worker" in validate_cluster_yaml(path, layout=False)["available_node_types"]


def test_module_cli_prints_ok_or_the_error(tmp_path, raw):
    ok = subprocess.run([sys.executable, "-m", "s2gr_ray.cluster", str(CLUSTER_YAML)], capture_output=True,
                        text=True, cwd=REPO, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("OK"), ok.stderr
    assert "gpu_worker: workers 0..4" in ok.stdout
    bad = broken(tmp_path, raw, lambda c: c.update(idle_timout_minutes=3))
    fail = subprocess.run([sys.executable, "-m", "s2gr_ray.cluster", str(bad)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert fail.returncode == 1 and "idle_timout_minutes" in fail.stderr and "OK" not in fail.stdout
