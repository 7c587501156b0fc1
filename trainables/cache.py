"""Content-addressed artifact cache: a trained network is keyed by exactly the config that
determines it.

Concurrent trials (processes, on any node that sees the store) never train the same artifact twice:
a lease per key elects one trainer, and the others wait and load what it wrote. In a folder the
lease is a marker file created exclusively and kept alive by a heartbeat (KeyLease; no fcntl, which
NFS does not honour reliably); in an object store (trainables.storage), which has no
create-if-absent, it is held by a named Ray actor the whole cluster shares (ActorLease).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.fit import CHECKPOINT_FILE, Distributed, build, save_checkpoint
from trainables.identity import artifact_identity, artifact_key
from trainables.registry import Artifact
from trainables.storage import Place


def _died_here(token: str) -> bool:
    """Whether a lease token ("host:pid:nonce") names a process on this node that no longer
    exists (a holder on another node is judged by its heartbeat alone)."""
    host, _, rest = token.partition(":")
    pid = rest.partition(":")[0]
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class KeyLease:
    """Who trains one key: the process that creates `<folder>/.training` (O_CREAT | O_EXCL, atomic
    on local disks, NFS v3+ and the shared filesystems clusters mount). While it trains, a thread
    touches the marker every `stale_after / 6` seconds; a waiter that sees the marker's mtime
    unchanged for `stale_after` seconds of its own clock (no cross-node clock comparison) takes the
    lease over: the holder died. A holder on the waiter's own node whose process is gone is taken
    over at once (a killed trial's restart does not wait out the heartbeat). A race in the
    takeover costs at most a duplicate training of the same deterministic network; model.pt is
    written by an atomic rename, so it is never torn."""

    MARKER = ".training"

    def __init__(self, folder: Path, stale_after: float = 60.0, poll: float = 0.2):
        self.folder, self.stale_after, self.poll = folder, stale_after, poll
        self.marker = folder / self.MARKER
        self.token = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex}"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self, done: Callable[[], bool]) -> bool:
        """True when this process holds the lease (it trains), False once done() holds (reuse)."""
        seen: tuple[float, float] | None = None  # (marker mtime, when this process first saw it)
        while True:
            if done():
                return False
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(self.token)
                self._beat = threading.Thread(target=self._heartbeat, daemon=True)
                self._beat.start()
                return True
            try:
                mtime = self.marker.stat().st_mtime
                holder = self.marker.read_text()
            except FileNotFoundError:
                continue  # released meanwhile: try again at once
            now = time.monotonic()
            if _died_here(holder):  # a holder on this node that is gone: no need to wait
                self._take_over(mtime)
                seen = None
                continue
            if seen is None or seen[0] != mtime:
                seen = (mtime, now)
            elif now - seen[1] > self.stale_after:
                self._take_over(mtime)
                seen = None
                continue
            time.sleep(self.poll)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_after / 6):
            try:
                os.utime(self.marker)
            except FileNotFoundError:
                return

    def _take_over(self, stale_mtime: float) -> None:
        """Move a stale marker aside (one mover wins the rename); put back a live one moved by a
        racing waiter."""
        aside = self.folder / f"{self.MARKER}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(self.marker, aside)
        except FileNotFoundError:
            return
        try:
            if aside.stat().st_mtime != stale_mtime:  # a new holder's marker: restore it
                try:
                    os.link(aside, self.marker)
                except FileExistsError:
                    pass
        finally:
            aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the marker if it is still this process's."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            if self.marker.read_text() == self.token:
                self.marker.unlink()
        except FileNotFoundError:
            pass


class _Leases:
    """Who trains which key, for every process of a Ray cluster (one named, detached actor):
    key -> (holder's token, when its last heartbeat arrived, on the actor's clock)."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, token: str, stale_after: float) -> bool:
        held = self.held.get(key)
        now = time.monotonic()
        if held is None or held[0] == token or now - held[1] > stale_after:
            self.held[key] = (token, now)
            return True
        return False

    def beat(self, key: str, token: str) -> None:
        if self.held.get(key, ("",))[0] == token:
            self.held[key] = (token, time.monotonic())

    def release(self, key: str, token: str) -> None:
        if self.held.get(key, ("",))[0] == token:
            del self.held[key]


def lease_actor():
    """The cluster's `_Leases` actor, created by the first process that asks. It is scheduled
    outside the caller's placement group: Tune captures a trial's child actors in the trial's
    group, and such an actor died with the first trial that ended (seen in a 2-node S3 study)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return (
        ray.remote(_Leases)
        .options(
            name=ActorLease.ACTOR,
            namespace=ActorLease.NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
        )  # fmt: skip
        .remote()
    )


class ActorLease:
    """KeyLease's contract for a store without create-if-absent: the lease of `key` is held in
    the cluster's `_Leases` actor (namespace "sc-guidance"), kept alive by a heartbeat thread; a
    holder silent for `stale_after` seconds (a killed trial) is replaced. If the actor itself is
    lost (its node died), a new one is made: the leases it held are forgotten, which costs at most
    a duplicate training of the same deterministic network (model.pt is one atomic PUT)."""

    ACTOR, NAMESPACE = "sc-guidance-leases", "sc-guidance"

    def __init__(self, key: str, stale_after: float = 60.0, poll: float = 0.5):
        self.key, self.stale_after, self.poll = key, stale_after, poll
        self.token = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex}"
        self.actor = lease_actor()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _call(self, method: str, *args: object) -> object:
        """actor.method(*args), on a new actor if the old one is gone."""
        import ray

        try:
            return ray.get(getattr(self.actor, method).remote(*args))
        except ray.exceptions.RayActorError:
            self.actor = lease_actor()
            return ray.get(getattr(self.actor, method).remote(*args))

    def acquire(self, done: Callable[[], bool]) -> bool:
        """True when this process holds the lease (it trains), False once done() holds (reuse)."""
        while True:
            if done():
                return False
            if self._call("acquire", self.key, self.token, self.stale_after):
                self._beat = threading.Thread(target=self._heartbeat, daemon=True)
                self._beat.start()
                return True
            time.sleep(self.poll)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_after / 6):
            try:
                self._call("beat", self.key, self.token)
            except Exception:  # noqa: BLE001 - a missed beat only risks a duplicate training
                pass

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            self._call("release", self.key, self.token)
        except Exception:  # noqa: BLE001 - the trained network is stored; the lease is moot
            pass


def checksum_file(model: Path) -> Path:
    """Where a stored network's sha256 lives: model.pt -> model.pt.sha256."""
    return model.with_name(f"{model.name}.sha256")


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksum(model: Path) -> None:
    """Write model.pt.sha256 beside a network just saved (atomically, like the network)."""
    tmp = checksum_file(model).with_name(f"{model.name}.sha256.{os.getpid()}.tmp")
    tmp.write_text(file_sha256(model) + "\n")
    os.replace(tmp, checksum_file(model))


def verify(model: Path) -> str | None:
    """Why a stored network cannot be used (None when it can): its sha256 differs from the one
    written with it; a network stored before checksums must at least load."""
    record = checksum_file(model)
    if record.exists():
        expected = record.read_text().strip()
        actual = file_sha256(model)
        return None if actual == expected else f"sha256 {actual[:12]} != stored {expected[:12]}"
    try:
        torch.load(model, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a corrupt one
        return f"cannot be loaded ({type(exc).__name__})"
    return None


def quarantine(model: Path, why: str) -> Path | None:
    """Move a corrupt network aside (model.pt.corrupt-<time>, kept for inspection) and say so on
    stderr; None if another process moved it first."""
    aside = model.with_name(f"{model.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.rename(model, aside)
    except FileNotFoundError:
        return None
    checksum_file(model).unlink(missing_ok=True)
    print(f"artifact cache: {model} is corrupt ({why}); moved to {aside.name}, training it again",
          file=sys.stderr, flush=True)  # fmt: skip
    return aside


class ArtifactCache:
    """Trained artifacts under root/<name>-<key>/ (model.pt, identity.json, training checkpoint).
    root: a folder, or an object-store URI whose node-local mirror holds the files (only
    identity.json, model.pt and the training checkpoint are stored, so an interrupted network
    continues from its last checkpoint on whichever node trains it next)."""

    def __init__(self, root: str | Path | Place, stale_after: float = 60.0):
        self.place = root if isinstance(root, Place) else Place(str(root))
        self.root = self.place.local
        self.root.mkdir(parents=True, exist_ok=True)
        self.stale_after = stale_after  # seconds without a heartbeat before a lease is taken over

    def get_or_train(
        self,
        artifact: Artifact,
        config: TrialConfig,
        train_fn: Callable[[Path], nn.Module],
        *,
        dim: int | tuple[int, ...],  # features (flat data) or (C, H, W)
        num_classes: int,
        needs: dict[str, str] | None = None,
        distributed: Distributed | None = None,
    ) -> tuple[nn.Module, str, bool]:
        """(EMA network, key, reused?). train_fn(checkpoint_dir) trains on a miss, resuming if it
        can.

        Under data parallelism rank 0 holds the key's lease and tells the other ranks whether to
        load or to train with it; rank 0 writes the model.
        """
        identity = artifact_identity(artifact, config, needs)
        key = f"{artifact.name}-{artifact_key(identity)}"
        folder = self.root / key
        model = folder / "model.pt"
        rank = distributed.rank if distributed is not None else 0
        lease = None
        try:
            if rank == 0:
                folder.mkdir(exist_ok=True)
                # One trainer per key, on any node; the others wait for model.pt and reuse it.
                if self.place.remote:
                    lease = ActorLease(str(self.place / key), self.stale_after)
                else:
                    lease = KeyLease(folder, self.stale_after)
                if not lease.acquire(lambda: self.intact(model)):
                    lease = None
            reused = self.intact(model) if rank == 0 else None
            if distributed is not None:
                reused = distributed.broadcast(reused)
            if reused:
                self.place.pull(model)  # every rank: a rank on another node has no copy yet
                net = build(artifact, config, dim, num_classes)
                net.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
                net = net.eval().requires_grad_(False)
            else:
                if rank == 0:
                    (folder / "identity.json").write_text(
                        json.dumps(identity, indent=2, sort_keys=True)
                    )
                    # A checkpoint an interrupted trainer on any node left in the store
                    # (checkpoint_saved): training goes on from its step.
                    self.place.pull(folder / CHECKPOINT_FILE, fresh=True)
                net = train_fn(folder)
                if rank == 0:
                    save_checkpoint(model, net.state_dict())
                    write_checksum(model)
                    self.place.push(folder / "identity.json")
                    self.place.push(checksum_file(model))
                    self.place.push(model)  # last: a stored model.pt means a finished network
        finally:
            if lease is not None:
                lease.release()
        return net, key, reused

    def checkpoint_saved(self, checkpoint: Path) -> None:
        """A training checkpoint was written in a key's folder: copied into the store (an object
        store; a folder store holds it already), where the next trainer of the key finds it."""
        self.place.push(checkpoint)

    def intact(self, model: Path) -> bool:
        """Whether a finished, uncorrupted network is stored at model (the store's copy pulled
        into the mirror first); a corrupt one is moved aside, so its key is trained again."""
        if not self.place.exists(model):
            return False
        self.place.pull(checksum_file(model))
        self.place.pull(model)
        why = verify(model)
        if why is None:
            return True
        quarantine(model, why)
        return False
