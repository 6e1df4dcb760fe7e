"""A local Ray's workers ask their own cluster about actors, whatever other Ray runs on the machine.

Ray Train's placement-group cleaner (a detached actor beside every run) polls the state API for the run's
controller and removes the run's placement group, killing its workers, when the answer is "no such actor". Found
for real: a test run's training was killed a second after a benchmark on the same machine started a Ray whose
dashboard took 127.0.0.1:8265, the address a worker's auto-detection named for the test's (dashboard-less) Ray.
"""
from __future__ import annotations

import pytest
from ray_head import LocalRayHead

from s2gr_ray.training.ray_env import DEFAULT_DASHBOARD_PORT, _port_free

pytestmark = [pytest.mark.ray]


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

    prober = Prober.remote()
    me = prober._actor_id.hex()
    assert ray.get(prober.api_server.remote()) == ray_session
    assert ray.get(prober.alive.remote(me)) is True
    # another Ray with its dashboard on 8265 (no auth: it answers anyone), as a user's `ray start` or a benchmark
    neighbour = LocalRayHead(0, env={"RAY_AUTH_MODE": "disabled"}, dashboard_port=DEFAULT_DASHBOARD_PORT).start()
    try:
        assert ray.get(prober.api_server.remote()) == ray_session
        assert ray.get(prober.alive.remote(me)) is True
    finally:
        neighbour.stop()
