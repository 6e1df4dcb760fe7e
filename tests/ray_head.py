"""A real Ray head for tests (`ray start --head --block`), started and stopped by the tests alone.

`ray stop` (and AutoscalingCluster.start/shutdown, which call `ray stop --force`) end every Ray process of the
machine, other test runs' included. So the head runs as `ray start --head --block` in a process group of its own,
on free ports and under a temp dir of its own; `stop()` sends SIGTERM to that process (Ray then stops the head's
processes; RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 skips the 30 s drain), and SIGKILLs whatever of ours is left:
the descendants recorded before, and any process whose command line names our temp dir (fake autoscaler nodes
are started by the autoscaler, not by the head).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from s2gr_ray.training.ray_env import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: its `ray` and `python` run the head, the jobs and the drivers


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _naming(marker: str) -> set[int]:
    """Processes whose command line contains `marker` (our unique temp dir)."""
    out = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                out.add(int(cmdline.parent.name))
        except OSError:
            continue
    out.discard(os.getpid())
    return out


class LocalRayHead:
    """`ray start --head --block` with token auth, free ports and its own temp dir; `stop()` ends only it."""

    def __init__(self, num_cpus: float, extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 dashboard_port: int = 0):
        # A short path: Ray's unix sockets live under the temp dir and socket paths are limited to ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="s2gr-ray-")
        self.gcs_port, self.dashboard_port = free_port(), dashboard_port or free_port()
        self.token = secrets.token_hex(32)
        # Token auth as Ray 2.60 uses it for local clusters, with the token in the environment (not ~/.ray).
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
        self.env.update(self.auth_env)
        self.env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TMPDIR": self.temp_dir,
                         "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0",
                         # SIGTERM otherwise drains the node for up to 30 s before stopping it.
                         "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
        self.env.update(env or {})
        self.cmd = [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}", f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dir}",
            "--include-dashboard=true", f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats", *(extra_args or []),
        ]
        self.log_path = Path(self.temp_dir) / "head.log"
        self.proc: subprocess.Popen | None = None
        self._pids: set[int] = set()

    @property
    def ray(self) -> str:
        return str(BIN / "ray")

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def client_env(self, auth: bool = True) -> dict[str, str]:
        """Environment for a `ray job ...` client or a driver: the venv first on PATH, the token when auth."""
        env = {k: v for k, v in self.env.items() if not k.startswith("RAY_AUTH")}
        if auth:
            env.update(self.auth_env)
        return env

    def start(self, timeout: float = 90) -> "LocalRayHead":
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log_path.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=self.temp_dir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "--block" in self.log_path.read_text() and self._dashboard_up():
                self._pids |= _descendants(self.proc.pid)
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not come up in {timeout:.0f}s:\n{self.log_tail()}")

    def _dashboard_up(self) -> bool:
        req = urllib.request.Request(f"{self.dashboard}/api/version",
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM our head (Ray drains and ends its processes), then SIGKILL what is left of ours."""
        if self.proc is None:
            return
        self._pids |= _descendants(self.proc.pid) | _naming(self.temp_dir)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        deadline = time.time() + 10
        left = {p for p in self._pids | _naming(self.temp_dir) if Path(f"/proc/{p}").exists()}
        while left and time.time() < deadline:
            time.sleep(0.5)
            left = {p for p in left if Path(f"/proc/{p}").exists()}
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def run(self, args: list[str], timeout: float, auth: bool = True, cwd: Path = REPO) -> subprocess.CompletedProcess:
        """A client command (e.g. `ray job submit ...`) against this head."""
        return subprocess.run(args, env=self.client_env(auth), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
