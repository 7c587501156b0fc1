"""A study's own local Ray: its processes ask its own state API, whatever cluster file another Ray
left behind (Ray Train's placement-group cleaner asks it whether a trial's controller lives)."""

import subprocess
import sys
import tempfile

import pytest
from cli_helpers import cli_env

pytestmark = pytest.mark.slow

# In a process of its own (the test process starts no Ray): a dead address in the cluster file
# `ray start` writes, then the study's init_ray, then an actor asking the state API about itself.
PROBE = """
import sys, time
from pathlib import Path
Path(sys.argv[1], "ray").mkdir()
Path(sys.argv[1], "ray", "ray_current_cluster").write_text("127.0.0.1:9")  # a cluster long gone
import ray
from study.cluster import init_ray
init_ray(None, dashboard=True)

@ray.remote(num_cpus=0)
class Probe:
    def ask(self):
        from ray.util.state import get_actor
        start = time.monotonic()
        me = get_actor(ray.get_runtime_context().get_actor_id(), timeout=10)
        return me.state, time.monotonic() - start

state, seconds = ray.get(Probe.remote().ask.remote())
print(f"state {state} in {seconds:.2f} s")
"""


def test_a_trial_process_asks_its_own_clusters_state_api_not_a_stale_cluster_file():
    """Without RAY_API_SERVER_ADDRESS the query goes to the dead address and fails after 40 s (each
    Ray Train trial then waited 12 s for its cleaner to stop)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as ray_tmp:  # short: Ray's socket paths
        result = subprocess.run(
            [sys.executable, "-c", PROBE, ray_tmp],
            env={**cli_env(), "RAY_TMPDIR": ray_tmp},
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    state, seconds = result.stdout.split("state ")[1].split(" in ")
    assert state == "ALIVE" and float(seconds.split()[0]) < 5, result.stdout
