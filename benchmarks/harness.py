"""What the benchmark scripts share to measure fairly: a training run in a fresh child process, and a wait for a
quiet machine.

- ``train_subprocess`` trains a prepared run in its own Python process and local Ray, as `s2gr train` runs it (the
  measuring process's leftovers and imports do not count), optionally calling ``watch(process)`` while it runs
  (speed.py samples its memory); returns train_stage's metrics.
- ``wait_for_quiet`` waits until the CPUs are idle. On this 2-core class of machine a second CPU training slows a
  measured one far beyond 2x (each worker runs its own torch threads; OpenMP spin-waits): an epoch took 582 s
  instead of ~60 s beside another training run (2026-11-29). ``busiest`` names what is running.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

# the child: train RUN from CONFIG (JSON; null = the defaults) with OVERRIDES (JSON list), progress to stdout,
# the metrics as one line "RESULT <json>" at the end
_CHILD = """
import json, sys
from pathlib import Path
from s2gr_ray.config import load_config
from s2gr_ray.training.driver import train_stage
out = train_stage(load_config(json.loads(sys.argv[1]), json.loads(sys.argv[2])), Path(sys.argv[3]),
                  lambda m: print(m, flush=True))
print("RESULT " + json.dumps(out), flush=True)
"""


def child_env(env: dict[str, str | None] | None = None, code: str | Path = ROOT) -> dict[str, str]:
    """This process's environment for a training child: without RAY_ADDRESS (the child starts its own local Ray),
    with ``code`` first on PYTHONPATH (the checkout whose s2gr_ray is measured), then ``env`` applied (a value sets
    a variable, None removes it)."""
    child = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child["PYTHONPATH"] = os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for key, value in (env or {}).items():
        if value is None:
            child.pop(key, None)
        else:
            child[key] = value
    return child


def train_subprocess(run: Path, over: list[str], config: str | None = None, env: dict[str, str | None] | None = None,
                     code: str | Path = ROOT, watch: Callable[[subprocess.Popen], None] | None = None,
                     log_path: Path | None = None) -> dict:
    """Train RUN (CONFIG, None = the defaults, with the overrides ``over``) in a fresh process with its own local
    Ray, whose workers inherit ``child_env(env, code)``. ``watch(process)``, if given, is called repeatedly while the
    child runs (it paces itself; without it the wait polls every 0.2 s). The child's output goes to ``log_path``
    (default RUN/train_child.log). Returns train_stage's metrics (metrics.json's content) with ``wall``, the seconds
    of the whole process; raises SystemExit with the output's tail when the child fails."""
    log_path = log_path or run / "train_child.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with open(log_path, "w") as out:
        # cwd = the measured checkout: `python -c` puts the working folder first on sys.path, which must not shadow
        # `code`'s s2gr_ray with another one
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(config), json.dumps(over), str(run)],
                                 env=child_env(env, code), cwd=str(code), stdout=out, stderr=subprocess.STDOUT)
        try:
            while child.poll() is None:
                if watch is None:
                    time.sleep(0.2)
                else:
                    watch(child)
        finally:
            if child.poll() is None:  # interrupted: end the training run (its local Ray ends with it)
                child.terminate()
                child.wait()
    text = log_path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if child.returncode or not lines:
        raise SystemExit(f"training failed (exit {child.returncode}) with {over}; its output: {log_path}\n"
                         f"{text[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "wall": time.time() - t}


def busiest(n: int = 3, interval: float = 0.5) -> list[tuple[float, str]]:
    """The ``n`` processes using the most CPU over ``interval`` seconds: (percent of one core, command)."""
    import psutil

    procs = list(psutil.process_iter(["cmdline", "name"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(interval)
    rows = []
    for p in procs:
        try:
            rows.append((p.cpu_percent(None), " ".join(p.info["cmdline"] or [])[:80] or p.info["name"]))
        except psutil.Error:
            pass
    return sorted(rows, reverse=True)[:n]


def wait_for_quiet(limit_s: float = 60.0, busy_percent: float = 10.0,
                   log: Callable[[str], None] = print) -> tuple[bool, float]:
    """Wait (up to ``limit_s``) until the machine's CPUs are below ``busy_percent`` for a second. Returns (whether
    they were, the seconds waited); when they were not, logs the busiest processes."""
    import psutil

    t0 = time.perf_counter()
    while True:
        quiet = psutil.cpu_percent(interval=1.0) < busy_percent
        if quiet or time.perf_counter() - t0 >= limit_s:
            break
    waited = time.perf_counter() - t0
    if quiet:
        log(f"quiet machine after {waited:.0f}s")
    else:
        top = "; ".join(f"{pct:.0f}% {cmd}" for pct, cmd in busiest())
        log(f"the machine is still busy after {waited:.0f}s (CPU >= {busy_percent:.0f}%): timings measured now "
            f"are slowed by other work; busiest: {top}")
    return quiet, waited
