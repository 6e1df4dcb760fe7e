"""benchmarks/harness.py: the training child's environment, its failure report, the quiet-machine wait."""
from __future__ import annotations

import os

import pytest


def test_child_env_drops_ray_address_puts_code_first_and_applies_env(load_script, monkeypatch, tmp_path):
    h = load_script("harness")
    monkeypatch.setenv("RAY_ADDRESS", "ray://elsewhere:10001")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", "/already/there")
    env = h.child_env({"OMP_NUM_THREADS": None, "S2GR_EVAL_KEEP_BYTES": "0"}, code=tmp_path)
    assert "RAY_ADDRESS" not in env and "OMP_NUM_THREADS" not in env
    assert env["S2GR_EVAL_KEEP_BYTES"] == "0"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/already/there"]
    monkeypatch.delenv("PYTHONPATH")
    assert h.child_env(code=tmp_path)["PYTHONPATH"] == str(tmp_path)


def test_failed_child_names_its_log_and_shows_the_error(load_script, tmp_path):
    h = load_script("harness")
    watched = []
    with pytest.raises(SystemExit) as err:  # an unknown key: load_config refuses it in the child
        h.train_subprocess(tmp_path / "run", ["train.no_such_key=1"], watch=lambda child: watched.append(child.pid))
    log = tmp_path / "run" / "train_child.log"
    assert str(log) in str(err.value) and "no_such_key" in str(err.value)
    assert "no_such_key" in log.read_text()
    assert watched and all(pid == watched[0] for pid in watched)  # called while the child ran, with the child


def test_wait_for_quiet_gives_up_at_the_limit_and_names_the_busiest(load_script):
    h = load_script("harness")
    lines = []
    quiet, waited = h.wait_for_quiet(limit_s=0.0, busy_percent=-1.0, log=lines.append)  # never quiet
    assert not quiet and waited >= 1.0  # one second's sample
    assert len(lines) == 1 and "still busy" in lines[0] and "busiest:" in lines[0]
    quiet, _ = h.wait_for_quiet(limit_s=0.0, busy_percent=101.0, log=lines.append)  # always quiet
    assert quiet and lines[-1].startswith("quiet machine")
