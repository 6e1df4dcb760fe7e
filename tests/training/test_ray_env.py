"""A local Ray's workers ask their own cluster about actors, whatever other Ray runs on the machine.

Ray Train's placement-group cleaner (a detached actor beside every run) polls the state API for the run's
controller and removes the run's placement group, killing its workers, when the answer is "no such actor". Found
for real: a test run's training was killed a second after a benchmark on the same machine started a Ray whose
dashboard took 127.0.0.1:8265, the address a worker's auto-detection named for the test's (dashboard-less) Ray.
"""
from __future__ import annotations

import socket

import pytest
from ray_head import LocalRayHead

from s2gr_ray.config import RayConfig
from s2gr_ray.training.ray_env import API_SERVER_ENV, DEFAULT_DASHBOARD_PORT, _port_free, start_local_ray

pytestmark = [pytest.mark.ray]


def test_a_dashboard_port_taken_before_ray_binds_it_is_replaced_by_a_free_one(tmp_path_factory):
    """Another program takes the chosen port between the check and Ray's bind: Ray starts without a dashboard,
    which start_local_ray sees, and it starts Ray again on a free port (the pin names the dashboard it got)."""
    import ray

    lines = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        url = start_local_ray(RayConfig(num_cpus=1, temp_dir=str(tmp_path_factory.mktemp("ray"))), log=lines.append,
                              dashboard_port=port)
    try:
        assert any(f"did not start on port {port}" in ln for ln in lines)
        assert url != f"http://127.0.0.1:{port}" and lines[-1] == f"ray: dashboard at {url}"

        @ray.remote(num_cpus=0)
        def pinned() -> str | None:
            import os

            return os.environ.get(API_SERVER_ENV)

        assert ray.get(pinned.remote()) == url
    finally:
        ray.shutdown()


def test_a_worker_still_asks_its_own_dashboard_after_another_ray_takes_port_8265(ray_session):
    import ray
    from ray.dashboard.utils import get_address_for_submission_client
    from ray.train.v2._internal.state.util import is_actor_alive  # what the placement-group cleaner calls

    if not _port_free(DEFAULT_DASHBOARD_PORT):
        pytest.skip(f"127.0.0.1:{DEFAULT_DASHBOARD_PORT} is taken on this machine: the neighbour cannot be started")

    @ray.remote(num_cpus=0)
    class Prober:
        """Long-lived, like the cleaner: it first looks its cluster up while it is the only Ray of the machine."""

        def api_server(self) -> str:
            return get_address_for_submission_client(None)

        def alive(self, actor_id: str):
            return is_actor_alive(actor_id, timeout=10)

        def detached_child_api_server(self) -> str | None:
            """What a detached actor this actor starts sees (Ray Train's controller starts the cleaner so)."""
            child = Child.options(lifetime="detached").remote()
            try:
                return ray.get(child.api_server.remote())
            finally:
                ray.kill(child)

    @ray.remote(num_cpus=0)
    class Child:
        def api_server(self) -> str | None:
            import os

            return os.environ.get(API_SERVER_ENV)

    prober = Prober.remote()
    me = prober._actor_id.hex()
    assert ray.get(prober.api_server.remote()) == ray_session
    assert ray.get(prober.alive.remote(me)) is True
    assert ray.get(prober.detached_child_api_server.remote()) == ray_session
    # another Ray with its dashboard on 8265 (no auth: it answers anyone), as a user's `ray start` or a benchmark
    neighbour = LocalRayHead(0, env={"RAY_AUTH_MODE": "disabled"}, dashboard_port=DEFAULT_DASHBOARD_PORT).start()
    try:
        assert ray.get(prober.api_server.remote()) == ray_session
        assert ray.get(prober.alive.remote(me)) is True
    finally:
        neighbour.stop()
