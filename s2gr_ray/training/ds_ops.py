"""DeepSpeed's JIT-built ops: never wait forever on the lock of a build that was killed.

On a CPU node the first `deepspeed.initialize` compiles a shared-memory op (`deepspeed_shm_comm`, ~40-60 s) under
torch's extension lock (`<TORCH_EXTENSIONS_DIR>/<op>/lock`; the engine sets TORCH_EXTENSIONS_DIR, below). The
builder holds that file open while it compiles and deletes it when done; a builder that is killed mid-build (a Ray
worker killed by a failure, a timeout or the end of a job) leaves the file behind, and every later
`deepspeed.initialize` on the machine then waits on it forever, silently. `clear_stale_lock` runs before DeepSpeed
starts: a lock that no process on this host holds open and that has not gone away within `grace_s` is removed, with
a line saying so.

torch's default build root (`~/.cache/torch_extensions`) is shared by every Python environment of the user, and the
build of an op records its compiler flags, which name the environment's include folders: two checkouts with their
own virtual environments would rebuild the op each time the other one used it last (40-75 s and ~3 GiB of compiler
processes, inside the training run). `use_environment_build_root` gives each environment its own folder under that
root unless TORCH_EXTENSIONS_DIR is set.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

SHM_OP = "deepspeed_shm_comm"


def environment_build_root() -> Path:
    """This Python environment's own build root: `<torch's default root>/env-py<XY>-<hash of sys.prefix>`."""
    from torch.utils.cpp_extension import get_default_build_root

    tag = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return Path(get_default_build_root()) / f"env-py{sys.version_info.major}{sys.version_info.minor}-{tag}"


def use_environment_build_root() -> Path:
    """Set TORCH_EXTENSIONS_DIR to `environment_build_root()` unless it is set already; the folder torch builds
    JIT extensions under from now on in this process (and in the processes it starts)."""
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(environment_build_root())
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def build_dir(op: str) -> Path:
    """Where torch builds (and locks) the extension `op`: `<TORCH_EXTENSIONS_DIR>/<op>`, else `<torch's default
    root>/py<XY>_<acc>/<op>` (the engine sets TORCH_EXTENSIONS_DIR first: `use_environment_build_root`)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(op, verbose=False))


def lock_holders(lock: Path) -> list[int] | None:
    """Pids of this host's processes that hold `lock` open; None where /proc cannot tell (not Linux)."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = str(lock.resolve())
    holders = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        holders.append(int(pid_dir.name))
                        break
                except OSError:
                    continue
        except OSError:  # the process ended, or is not ours to read
            continue
    return holders


def clear_stale_lock(op: str = SHM_OP, grace_s: float = 120.0, log: Callable[[str], None] = print,
                     poll_s: float = 1.0) -> bool:
    """Remove `op`'s build lock if it is stale; True if one was removed.

    A lock some process here holds open is a build in progress: left alone (torch waits for it). A lock nobody
    here holds is given until it is `grace_s` old (a build on another host sharing the folder holds it without an
    open file here); then it is removed.
    """
    lock = build_dir(op) / "lock"
    while lock.exists():
        holders = lock_holders(lock)
        if holders is None or holders:
            return False
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        if age >= grace_s:
            try:
                lock.unlink()
            except FileNotFoundError:
                return False
            log(f"deepspeed: removed a stale build lock {lock} ({age:.0f}s old, held by no process): an earlier "
                f"build of {op} was killed before it finished; it is rebuilt now")
            return True
        time.sleep(poll_s)
    return False
