"""Which code a benchmark table came from: the short commit of a checkout, marked ``-dirty`` when its tracked code
(the package, the benchmark scripts, configs, jobs, search spaces, pyproject.toml; not the results or
docs) differs from that commit, so a table never names a commit it did not run."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

CODE_PATHS = ["s2gr_ray", "benchmarks/*.py", "configs", "jobs", "search_spaces", "pyproject.toml"]


def commit(folder: str | Path) -> str:
    """``abc1234``, ``abc1234-dirty``, or ``$S2GR_COMMIT`` / ``unknown`` for a copy without ``.git``."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return os.environ.get("S2GR_COMMIT", "unknown")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return head + ("-dirty" if dirty else "")
