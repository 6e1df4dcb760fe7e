"""A DeepSpeed op build that was killed leaves torch's extension lock behind; nothing may wait on it forever."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from s2gr_ray.training.ds_ops import (SHM_OP, build_dir, clear_stale_lock, environment_build_root, lock_holders,
                                     use_environment_build_root)


def _lock(root: Path, monkeypatch, age_s: float) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    lock = build_dir(SHM_OP) / "lock"
    lock.touch()
    os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


def test_each_python_environment_builds_the_ops_in_its_own_folder(tmp_path, monkeypatch):
    """Two checkouts with their own venvs must not rebuild each other's op: the build records the compiler flags,
    which name the venv's include folders."""
    from torch.utils.cpp_extension import get_default_build_root

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "")  # restored (or removed) after the test
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # torch's default root, here under tmp_path
    here = environment_build_root()
    with monkeypatch.context() as m:
        m.setattr(sys, "prefix", str(tmp_path / "another-venv"))
        other = environment_build_root()
    assert here != other and here.parent == other.parent == Path(get_default_build_root())
    assert str(here).startswith(str(tmp_path / "cache"))
    assert environment_build_root() == here  # stable for one environment
    assert use_environment_build_root() == here and os.environ["TORCH_EXTENSIONS_DIR"] == str(here)
    assert build_dir(SHM_OP) == here / SHM_OP
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "chosen"))  # a folder the user chose wins
    assert use_environment_build_root() == tmp_path / "chosen" and build_dir(SHM_OP) == tmp_path / "chosen" / SHM_OP


def test_a_lock_no_process_holds_is_removed_with_a_message(tmp_path, monkeypatch):
    lock = _lock(tmp_path, monkeypatch, age_s=600)
    lines: list[str] = []
    assert lock_holders(lock) == []
    assert clear_stale_lock(log=lines.append) is True
    assert not lock.exists()
    assert len(lines) == 1 and str(lock) in lines[0] and "stale" in lines[0]
    assert clear_stale_lock(log=lines.append) is False and len(lines) == 1  # nothing left to clear


def test_a_young_unheld_lock_gets_its_grace_time_first(tmp_path, monkeypatch):
    lock = _lock(tmp_path, monkeypatch, age_s=0)
    start = time.monotonic()
    assert clear_stale_lock(grace_s=1.0, poll_s=0.05, log=lambda _: None) is True
    assert time.monotonic() - start >= 0.9 and not lock.exists()


def test_a_lock_a_running_build_holds_is_left_alone(tmp_path, monkeypatch):
    lock = _lock(tmp_path, monkeypatch, age_s=600)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys, time
        fd = os.open({str(lock)!r}, os.O_RDONLY)
        print("open", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert lock_holders(lock) == [holder.pid]
        assert clear_stale_lock(grace_s=0, log=lambda _: None) is False
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.deepspeed
@pytest.mark.timeout(400)
def test_a_deepspeed_engine_starts_despite_a_killed_builds_lock(tmp_path):
    """The real case: a stale lock in the op's build folder. Without the check DeepSpeed waits on it for ever; with
    it the engine starts (a copy of this machine's built op is used where there is one, so nothing recompiles)."""
    ext = tmp_path / "torch_extensions"
    # this environment's own build folder (TORCH_EXTENSIONS_DIR, else the environment's folder the engine uses)
    cached = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or environment_build_root()) / SHM_OP
    if (cached / f"{SHM_OP}.so").exists():
        shutil.copytree(cached, ext / SHM_OP, ignore=shutil.ignore_patterns("lock"))
    (ext / SHM_OP).mkdir(parents=True, exist_ok=True)
    lock = ext / SHM_OP / "lock"
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    script = textwrap.dedent("""
        import os
        import torch, torch.distributed as dist
        from s2gr_ray.config import TrainConfig
        from s2gr_ray.training.engine import DeepSpeedEngine
        from s2gr_ray.training.ray_env import free_port
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0",
                          WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        dist.init_process_group("gloo", rank=0, world_size=1)
        engine = DeepSpeedEngine(torch.nn.Linear(4, 4), TrainConfig(batch_size=2, zero_stage=0), world_size=1,
                                 total_steps=1, device=torch.device("cpu"))
        print("engine ready", flush=True)
    """)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(ext), DS_ACCELERATOR="cpu")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "removed a stale build lock" in done.stdout and "engine ready" in done.stdout
    assert not lock.exists() and (ext / SHM_OP / f"{SHM_OP}.so").exists()
