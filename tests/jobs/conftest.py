"""A real Ray head for the jobs tests (tests/ray_head.py), started and stopped by these tests alone."""
from __future__ import annotations

import os
import shutil
from typing import Callable, Iterator

import pytest
from ray_head import LocalRayHead


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Callable[..., LocalRayHead]]:
    """Factory: `ray_head(num_cpus=2, extra_args=[...], env={...})` starts a head; teardown always stops it.

    before_start(head) runs once the ports are chosen, before `ray start` (e.g. to write a config naming them).
    """
    heads: list[LocalRayHead] = []

    def start(num_cpus: float = 2, extra_args: list[str] | None = None, env: dict[str, str] | None = None,
              before_start: Callable[[LocalRayHead], None] | None = None) -> LocalRayHead:
        head = LocalRayHead(num_cpus, extra_args, env)
        heads.append(head)
        if before_start is not None:
            before_start(head)
        return head.start()

    yield start
    for head in heads:
        head.stop()
        if not os.environ.get("S2GR_KEEP_RAY_TMP"):
            shutil.rmtree(head.temp_dir, ignore_errors=True)

