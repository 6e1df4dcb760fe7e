"""The autoscaler adds a GPU worker when Ray Train asks for a GPU bundle, and removes it once idle.

Ray's fake multi-node provider (what `ray.cluster_utils.AutoscalingCluster` uses: RAY_FAKE_CLUSTER=1 and an
autoscaling config with provider type fake_multinode) starts "nodes" as extra raylets on this machine. The node
types are cluster.yaml's, with resources shrunk to fit: a head with 0 CPUs, cpu_worker and gpu_worker pools with
min_workers 0. AutoscalingCluster itself is not used: its start/shutdown run `ray stop --force`, which would end
every Ray process on the machine, and this Ray install lacks the example YAML it reads.

The demand is a real TorchTrainer with the ScalingConfig s2gr_ray.training.driver.scaling_config builds for
train.use_gpu=true train.num_workers=1 (one bundle of {"CPU": train.cpus_per_worker, "GPU": 1}). The fake GPU is a
Ray resource only; torch stays on CPU (gloo) as it finds no CUDA device.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from s2gr_ray.cluster import validate_cluster_yaml

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
IDLE_TIMEOUT_MINUTES = 0.1
SMALL_STORE = 100 * 1024 * 1024  # object store per fake node: this machine runs several raylets at once

DRIVER = r'''
import json, sys, time
import ray
from ray.train import RunConfig
from ray.train.torch import TorchConfig, TorchTrainer
from s2gr_ray.config import load_config
from s2gr_ray.training.driver import scaling_config

address, out = sys.argv[1], sys.argv[2]
ray.init(address=address, log_to_driver=False)
t0 = time.time()
report = {"nodes_before": [(n["NodeID"], n["Resources"]) for n in ray.nodes() if n["Alive"]]}


def loop(config):
    import os, ray
    ctx = ray.get_runtime_context()
    with open(config["path"], "w") as f:
        json.dump({"node": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)


trainer = TorchTrainer(
    loop, train_loop_config={"path": out + "/worker.json"},
    torch_config=TorchConfig(backend="gloo"),
    scaling_config=scaling_config(load_config(None, ["train.use_gpu=true", "train.num_workers=1"])),
    run_config=RunConfig(name="autoscale", storage_path=out + "/storage"),
)
trainer.fit()
report["fit_seconds"] = time.time() - t0
worker = json.load(open(out + "/worker.json"))
report["worker"] = worker
nodes = {n["NodeID"]: n for n in ray.nodes()}
report["worker_node"] = {"resources": nodes[worker["node"]]["Resources"]}
deadline = time.time() + 90
while time.time() < deadline:
    node = {n["NodeID"]: n for n in ray.nodes()}[worker["node"]]
    if not node["Alive"]:
        break
    time.sleep(0.5)
report["removed_after_fit_seconds"] = time.time() - t0 - report["fit_seconds"]
report["worker_node_alive_at_end"] = node["Alive"]
report["nodes_alive_at_end"] = [(n["NodeID"], n["Resources"]) for n in ray.nodes() if n["Alive"]]
report["nodes_ever"] = len(ray.nodes())
print("REPORT " + json.dumps(report), flush=True)
'''


def fake_autoscaling_config(cluster_yaml: Path, gcs_address: str) -> dict:
    """cluster.yaml's node types on Ray's fake multi-node provider, resources shrunk to this machine."""
    real = validate_cluster_yaml(cluster_yaml)
    types = {}
    for name, t in real["available_node_types"].items():
        if name == real["head_node_type"]:
            continue
        gpus = t["resources"].get("GPU", 0)
        resources = {"CPU": 1, "object_store_memory": SMALL_STORE} | ({"GPU": 1} if gpus else {})
        types[name] = {"resources": resources, "node_config": {}, "min_workers": t["min_workers"], "max_workers": 2}
    # The fake provider names the head type ray.head.default; its resources mirror cluster.yaml's head (0 CPUs).
    types["ray.head.default"] = {"resources": {"CPU": real["available_node_types"][real["head_node_type"]]
                                               ["resources"].get("CPU", 0)}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "s2gr-fake", "max_workers": 4, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": types, "head_node_type": "ray.head.default", "auth": {}, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def test_gpu_bundle_scales_gpu_worker_up_then_down(ray_head, tmp_path):
    config_path = tmp_path / "autoscaling.json"
    head = ray_head(
        num_cpus=0,
        extra_args=[f"--autoscaling-config={config_path}", f"--object-store-memory={SMALL_STORE}"],
        env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
             "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
        before_start=lambda h: config_path.write_text(
            json.dumps(fake_autoscaling_config(REPO / "cluster.yaml", h.gcs_address))),
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    done = head.run([sys.executable, str(driver), head.gcs_address, str(tmp_path)], timeout=180)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("REPORT ")]
    assert done.returncode == 0 and lines, (done.stdout + done.stderr)[-6000:] + "\n" + head.log_tail()
    report = json.loads(lines[-1][len("REPORT "):])
    print(json.dumps(report, indent=1))  # shown with -s: timings of scale-up and scale-down

    # Before: the head alone, with no CPUs and no GPUs.
    assert len(report["nodes_before"]) == 1 and not report["nodes_before"][0][1].get("GPU")
    assert not report["nodes_before"][0][1].get("CPU")
    # The Train worker ran on a node the autoscaler added for the bundle: a gpu_worker (GPU resource, 1 GPU id).
    worker = report["worker"]
    assert worker["node"] != report["nodes_before"][0][0]
    assert report["worker_node"]["resources"].get("GPU") == 1.0
    assert worker["gpu_ids"] == ["0"] and worker["cuda_visible_devices"] == "0"
    # Only that node was ever added (no cpu_worker: nothing asked for CPUs alone) ...
    assert report["nodes_ever"] == 2
    # ... and it went away after the idle timeout, leaving the head alone again.
    assert report["worker_node_alive_at_end"] is False, report
    assert [n for n, _ in report["nodes_alive_at_end"]] == [report["nodes_before"][0][0]]
    assert report["removed_after_fit_seconds"] >= IDLE_TIMEOUT_MINUTES * 60 * 0.5
    # The autoscaler's own account names the node type it chose and why it removed it.
    monitor = (Path(head.temp_dir) / "session_latest" / "logs" / "monitor.log").read_text()
    assert "Adding 1 node(s) of type gpu_worker" in monitor
    assert "Removing 1 nodes of type gpu_worker (idle)" in monitor
    assert "of type cpu_worker" not in monitor
