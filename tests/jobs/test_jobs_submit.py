"""`ray job submit` against a real local Ray head (token auth) runs the whole pipeline through jobs/run.py.

The head is `ray start --head` from this venv, so the job's `python` and the cluster share the installed
packages; the code itself travels with `--working-dir` (the repository, minus .venv and friends).
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from s2gr_ray.cluster import job_runtime_env

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]

# configs/quickstart.yaml shrunk to seconds: 80 items, 150 users, a 2-level tokenizer, one epoch of a tiny model.
TINY_RUN = [
    "data.synthetic.num_items=80", "data.synthetic.num_users=150", "data.synthetic.num_top_categories=2",
    "data.synthetic.num_sub_categories=2", "data.synthetic.max_length=10", "embed.path=synthetic",
    "tokenizer.epochs=20", "tokenizer.codebook_sizes=[8,8]", "tokenizer.num_coarse=2", "tokenizer.latent_dim=8",
    "tokenizer.hidden_dims=[32]", "model.d_model=32", "model.num_heads=2", "model.d_head=16", "model.d_ff=64",
    "model.encoder_layers=1", "model.decoder_layers=1", "model.aux_decoder_layers=1",
    "train.max_epochs=1", "train.batch_size=64", "train.engine=ddp", "eval.beam_size=10",
]


@pytest.fixture(scope="module")
def head(ray_head):
    return ray_head(num_cpus=2)


def submit(head, job_id: str, entrypoint: list[str], runtime_env: dict, timeout: float):
    return head.run([head.ray, "job", "submit", "--address", head.dashboard, "--submission-id", job_id,
                     "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint],
                    timeout=timeout)


def status(head, job_id: str) -> str:
    done = head.run([head.ray, "job", "status", "--address", head.dashboard, job_id], timeout=60)
    return (done.stdout + done.stderr).lower()


def test_client_without_the_token_is_refused(head):
    """Ray 2.60 local clusters use token auth: `ray job` without RAY_AUTH_MODE=token + token is turned away."""
    refused = head.run([head.ray, "job", "list", "--address", head.dashboard], timeout=60, auth=False)
    assert refused.returncode != 0, refused.stdout
    assert "token" in (refused.stdout + refused.stderr).lower(), refused.stderr[-2000:]
    allowed = head.run([head.ray, "job", "list", "--address", head.dashboard], timeout=60)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


def test_job_submit_runs_the_whole_pipeline(head, tmp_path):
    out = tmp_path / "run"
    job_id = f"s2gr-test-{uuid.uuid4().hex[:8]}"
    # env_vars that init_ray also passes to ray.init: jobs/_job.py must let Ray combine the two runtime envs.
    runtime_env = job_runtime_env(env_vars={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "HF_HUB_OFFLINE": "1"})
    done = submit(head, job_id, ["python", "jobs/run.py", "configs/quickstart.yaml", *TINY_RUN, "--out", str(out)],
                  runtime_env, timeout=300)
    logs = done.stdout + done.stderr
    print("\n".join(ln for ln in logs.splitlines() if ln.startswith("[s2gr")))  # the stage timeline, with -s
    assert done.returncode == 0, logs[-6000:] + "\n--- head log ---\n" + head.log_tail()
    assert "succeeded" in status(head, job_id)

    # The code ran from the uploaded working dir (not the editable install in the venv).
    code_dir = logs.split("[s2gr job] code ", 1)[1].split(",", 1)[0]
    assert "runtime_resources" in code_dir and head.temp_dir in code_dir, code_dir

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_items"] == 80
    assert manifest["splits"]["test"] == manifest["splits"]["valid"] == 150
    assert json.loads((out / "tokenizer" / "manifest.json").read_text())["upstream"]["data"] == manifest["hash"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["count"] == 150 and 0.0 <= metrics["test"]["recall@10"] <= 1.0
    assert metrics["train"]["epochs"] == 1
    assert (out / "model" / "manifest.json").exists()


def test_failed_job_reports_the_config_error(head, tmp_path):
    """A misspelt override fails the job: `ray job submit` exits non-zero, status FAILED, the hint in the logs."""
    job_id = f"s2gr-test-{uuid.uuid4().hex[:8]}"
    done = submit(head, job_id, ["python", "jobs/prepare.py", "configs/quickstart.yaml", "train.lrr=0.1",
                                 "--out", str(tmp_path / "r")], job_runtime_env(), timeout=120)
    assert done.returncode != 0
    assert "did you mean 'train.lr'" in done.stdout + done.stderr
    assert "failed" in status(head, job_id)
    assert not (tmp_path / "r" / "manifest.json").exists()
