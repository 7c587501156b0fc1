"""Ray start-up and the cluster-size check, before anything of a study is written."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import StudyError
from study.spec import StudySpec, _check_images
from trainables.config import TrialConfig
from trainables.storage import Place


def _check_reachable(address: str) -> None:
    """ray.init retries an unreachable GCS for minutes: check the port first."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError):
        raise StudyError(
            f"cannot reach the Ray cluster at {address!r}; start it with 'ray start --head' "
            "or fix 'address' / RAY_ADDRESS"
        ) from None


def init_ray(address: str | None, dashboard: bool = True) -> None:
    """Connect to the spec's / RAY_ADDRESS cluster, else start a local Ray (with its dashboard
    unless dashboard is False: only a TorchTrainer inside a Tune trial needs it, and on a small
    machine its processes take CPU from the trials)."""
    import ray

    # A local cluster's GCS and raylets listen on every interface, so RAY_AUTH_MODE is left alone:
    # unset, Ray turns token authentication on for a new local cluster (token in ~/.ray).
    # Per-epoch training reports carry losses; the objective arrives with the final evaluation.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # No TensorBoard files from Tune's default loggers (runner.new_tuner adds CSV and JSON): MLflow
    # holds every metric, and tensorboardX imports torch into the driver (4 s a study).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if ray.is_initialized():
        return
    if address and address != "auto":
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                address="local",  # a new local Ray, even beside a cluster `ray start` left running
                num_cpus=os.cpu_count(),
                log_to_driver=False,
                configure_logging=False,
                **_own_dashboard(dashboard),
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120]
        raise StudyError(
            f"cannot reach the Ray cluster at {address!r} ({reason}); start it with "
            "'ray start --head' or fix 'address' / RAY_ADDRESS"
        ) from None


def _own_dashboard(dashboard: bool) -> dict[str, Any]:
    """ray.init's dashboard arguments for a new local Ray, and its processes pointed at that
    dashboard's state API.

    Ray Train's placement-group cleaner asks the state API whether the trial's controller is alive,
    and the state API, given no address, takes the cluster named in /tmp/ray/ray_current_cluster
    (written by `ray start`, left behind when that cluster died) or any other running Ray: a dead
    address cost every Train trial 12 s (the cleaner's stop timeout; the query waits 40 s), a live
    other cluster answers that the controller is gone. RAY_API_SERVER_ADDRESS, set before the
    raylet starts, is inherited by every worker and overrides both."""
    if not dashboard:
        return {"include_dashboard": False}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}


def worker_resources(cpus: float, gpus: float) -> dict[str, float]:
    """Ray resources of one Train worker (cpus_per_trial / gpus_per_trial apply per worker)."""
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


def check_cluster(spec: StudySpec) -> None:
    """Refuse a trial that needs more CPUs / GPUs than the whole cluster has (it would wait
    forever)."""
    import ray

    have = ray.cluster_resources()
    resources = spec.resources
    workers = max(1, resources.num_workers)
    need = {"CPU": resources.cpus_per_trial * workers, "GPU": resources.gpus_per_trial * workers}
    if resources.num_workers > 0:
        need["CPU"] += 0.01  # the trial's driver beside its Train workers
    for name, amount in need.items():
        if amount > have.get(name, 0.0) + 1e-9:
            raise StudyError(
                f"one trial needs {amount:g} {name} ({workers} Train worker(s); a trial's driver "
                f"takes 0.01 CPU beside its workers) but the Ray cluster has "
                f"{have.get(name, 0.0):g}; lower resources.num_workers / cpus_per_trial / "
                "gpus_per_trial or add nodes"
            )
    check_nodes(spec, [n["Resources"] for n in ray.nodes() if n.get("Alive")])


def check_nodes(spec: StudySpec, nodes: list[dict[str, float]]) -> None:
    """Refuse a trial whose smallest unit (a Train worker, or the whole trial in local mode) fits no
    single alive node: Ray places each worker on one node, so the cluster's total is not enough."""
    resources = spec.resources
    unit = worker_resources(resources.cpus_per_trial, resources.gpus_per_trial)
    if any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in unit.items()) for node in nodes):
        return
    what = "a Train worker" if resources.num_workers > 0 else "a trial (local mode)"
    largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    have = ", ".join(f"{largest.get(k, 0.0):g} {k}" for k in unit)
    need = ", ".join(f"{v:g} {k}" for k, v in unit.items())
    raise StudyError(
        f"{what} needs {need} on one node but no alive node has that much (the largest: {have}); "
        "lower resources.cpus_per_trial / gpus_per_trial (per worker) or add a larger node"
    )


def _probe(
    config: TrialConfig, dataset_images: bool, markers: list[str], stores: list[str]
) -> list[str]:
    """On one node: the study's folders visible (their marker files exist), its object stores
    writable and, for images, the dataset and the Inception weights present (the spec's own
    checks)."""

    problems = [
        f"{Path(m).parent} is not visible there; mount it at the same path on every node"
        for m in markers
        if not Path(m).exists()
    ]
    for store in stores:
        problem = Place(store).problem()
        if problem is not None:
            problems.append(
                f"cannot write to {store} there ({problem}); give every node the store's "
                "credentials and endpoint (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...)"
            )
    if dataset_images:
        _check_images(config, problems)
    return problems


def preflight_nodes(spec: StudySpec, folders: list, timeout: float = 120.0) -> None:
    """Before any trial: every alive node that can run trials sees the study's folders (a marker
    file the driver writes in each, looked for by a Ray task pinned to the node), can write to its
    object stores (trainables.storage.Place; a folder is given as a path or a Place) and holds the
    dataset and Inception weights the spec needs. A local Ray started by the study is this machine
    (already checked): nothing to do."""

    if not spec.address:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from trainables.data.images import IMAGE_DATASETS  # (imports torch: only for a cluster)

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    markers = []
    stores = [f.location for f in folders if getattr(f, "remote", False)]
    for folder in folders:
        if getattr(folder, "remote", False):
            continue
        folder = getattr(folder, "local", folder)
        Path(folder).mkdir(parents=True, exist_ok=True)
        marker = Path(folder) / f".study-probe-{uuid.uuid4().hex[:8]}"
        marker.write_text("visible?")
        markers.append(str(marker))
    config = spec.trial_config({"method": spec.methods[0]})  # resolved here, checked there
    probe = ray.remote(num_cpus=0)(_probe)
    try:
        refs = {
            n["NodeManagerAddress"] + " " + n["NodeID"][:8]: probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(config, spec.dataset in IMAGE_DATASETS, markers, stores)
            for n in nodes
        }
        for node, ref in refs.items():
            try:
                problems = ray.get(ref, timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                raise StudyError(
                    f"node {node} did not answer the pre-flight check within {timeout:g} s; "
                    "check that it is healthy (ray status) or remove it"
                ) from None
            if problems:
                raise StudyError(f"node {node}: {problems[0]}")
    finally:
        for marker in markers:
            Path(marker).unlink(missing_ok=True)


WINDOW = 10.0  # an asker that has not asked for this long is no longer evaluating


@dataclass
class CoreShares:
    """The lender's arithmetic: the free CPUs split among the trials that asked within WINDOW
    seconds, in the order they first asked (the remainder to the first ones)."""

    asked: dict[str, float] = field(default_factory=dict)  # asker -> its last ask (insertion:
    # the order of first asks)

    def grant(self, key: str, own: int, free: float, now: float) -> int:
        """The threads key may run now: own plus its share of the free CPUs."""
        self.asked = {k: t for k, t in self.asked.items() if now - t <= WINDOW or k == key}
        self.asked[key] = now
        askers, spare = list(self.asked), max(0, int(free))
        return own + spare // len(askers) + (askers.index(key) < spare % len(askers))

    def release(self, key: str) -> None:
        """key's evaluation ended: its share goes to the others at their next ask."""
        self.asked.pop(key, None)


class CoreLender:
    """The Ray actor that lends a local cluster's idle CPUs to the trials' evaluations
    (trainables.threads): the free CPUs are Ray's own count (the trials hold theirs), split
    among the trials asking now (CoreShares)."""

    def __init__(self) -> None:
        self.shares = CoreShares()

    def ask(self, key: str, own: int) -> int:
        """The torch threads key's evaluation may run now."""
        import ray

        free = ray.available_resources().get("CPU", 0.0)
        return self.shares.grant(key, own, free, time.monotonic())

    def release(self, key: str) -> None:
        """key's evaluation ended."""
        self.shares.release(key)


def core_lender(spec: StudySpec) -> Any:
    """The study's CoreLender (an actor holding no CPU) when it lends idle CPUs: a local cluster
    (this machine is the study's; a shared cluster's free CPUs are not), trials in local mode
    (their evaluation runs in the trial's process) and resources.lend_idle_cpus; else None."""
    resources = spec.resources
    if spec.address or resources.num_workers or not resources.lend_idle_cpus:
        return None
    import ray

    return ray.remote(num_cpus=0)(CoreLender).remote()
