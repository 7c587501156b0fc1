"""Content-addressed artifact cache: a trained network is keyed by exactly the config that
determines it.

Concurrent trials (processes) never train the same artifact twice: a file lock per key serialises
them,
and the second one loads what the first wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainables.config import TrialConfig, to_flat
from trainables.fit import Distributed, build, save_checkpoint
from trainables.methods import Artifact, artifact_config

ALWAYS = ("sde.", "model.", "train.")
# The code that shapes a trained network: its source enters every key, so a changed loss, network,
# training loop or data pipeline never reuses a network trained by older code (the store is shared
# across studies and platform versions).
SHAPING_CODE = (
    "fit.py", "losses.py", "methods.py", "sde.py", "cache.py", "networks", "data",
)  # fmt: skip


def code_version() -> str:
    """sha256 (16 hex digits) of the source of every module in SHAPING_CODE, in a fixed order."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for name in SHAPING_CODE:
        path = root / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


CODE_VERSION = code_version()
DATA_KEYS = (
    "data.name",
    "data.num_train",
    "data.seed",
    "data.root",
    "data.image_size",
    "data.flip",
)
# Settings that change how fast or how often, never what is trained.
NEUTRAL = ("train.channels_last", "train.checkpoint_every")


def artifact_identity(
    artifact: Artifact, config: TrialConfig, needs: dict[str, str] | None = None
) -> dict:
    """The exact config an artifact depends on (never the guidance scale or sampler settings)."""
    config = artifact_config(artifact, config)
    flat = to_flat(config)
    active = [t for t in artifact.terms if t.weight(config.loss) != 0]
    keys = [k for k in flat if k.startswith(ALWAYS) and k not in NEUTRAL] + list(DATA_KEYS)
    if artifact.uses_labels:
        keys += ["data.label_percent", "data.split_seed"]
    for term in active:
        keys += term.knobs()
    # With every row labeled, "labeled" rows are all rows and every batch mixing draws uniformly
    # from all of them: the "labeled" and "all" variants (CG-SC-labeled / CG-SC-all, CFG-labeled /
    # CFG-all) train the same network, so they share one key (tests/trainables/test_cache.py
    # trains both and compares the weights).
    full = config.data.label_percent >= 100.0
    return {
        "artifact": artifact.name,
        "network": artifact.network,
        "terms": [[t.term, "all" if full and t.rows == "labeled" else t.rows] for t in active],
        "batches": "all" if full else artifact.row_usage,  # how batches mix labeled and uniform
        "code": CODE_VERSION,
        "config": {k: flat[k] for k in sorted(set(keys))},
        "needs": dict(sorted((needs or {}).items())),
    }


def artifact_key(identity: dict) -> str:
    """sha256 of the identity's canonical JSON (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class ArtifactCache:
    """Trained artifacts under root/<name>-<key>/ (model.pt, identity.json, training checkpoint)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

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

        Under data parallelism rank 0 holds the key's lock and tells the other ranks whether to load
        or to train with it; rank 0 writes the model.
        """
        identity = artifact_identity(artifact, config, needs)
        key = f"{artifact.name}-{artifact_key(identity)}"
        folder = self.root / key
        rank = distributed.rank if distributed is not None else 0
        with contextlib.ExitStack() as stack:
            if rank == 0:
                folder.mkdir(exist_ok=True)
                lock = stack.enter_context(open(folder / ".lock", "w"))
                fcntl.flock(lock, fcntl.LOCK_EX)  # one trainer per key; others wait and then reuse
            reused = (folder / "model.pt").exists() if rank == 0 else None
            if distributed is not None:
                reused = distributed.broadcast(reused)
            if reused:
                net = build(artifact, config, dim, num_classes)
                net.load_state_dict(
                    torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
                )
                net = net.eval().requires_grad_(False)
            else:
                if rank == 0:
                    (folder / "identity.json").write_text(
                        json.dumps(identity, indent=2, sort_keys=True)
                    )
                net = train_fn(folder)
                if rank == 0:
                    save_checkpoint(folder / "model.pt", net.state_dict())
        return net, key, reused
