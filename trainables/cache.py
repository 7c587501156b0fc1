"""Content-addressed artifact cache: a trained network is keyed by exactly the config that determines it.

Concurrent trials (processes) never train the same artifact twice: a file lock per key serialises them,
and the second one loads what the first wrote.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainables.config import TrialConfig, to_flat
from trainables.fit import build, save_checkpoint
from trainables.methods import Artifact, LossTerm

# Loss knobs each term function reads besides its weight.
TERM_KNOBS = {"sc": ("loss.sc_weighting",), "dlsm": ("loss.dlsm_power",), "cfg_dsm": ("loss.p_uncond",)}
ALWAYS = ("sde.", "model.", "train.")
DATA_KEYS = ("data.name", "data.num_train", "data.seed")


def _term_keys(term: LossTerm) -> list[str]:
    keys = list(TERM_KNOBS.get(term.fn, ()))
    if term.weight_key is not None:
        keys.append(term.weight_key)
    return keys


def artifact_identity(artifact: Artifact, config: TrialConfig, needs: dict[str, str] | None = None) -> dict:
    """The exact config an artifact depends on (never the guidance scale or sampler settings)."""
    flat = to_flat(config)
    active = [t for t in artifact.terms if t.weight(config.loss) != 0]
    keys = [k for k in flat if k.startswith(ALWAYS)] + list(DATA_KEYS)
    if artifact.uses_labels:
        keys += ["data.label_percent", "data.split_seed"]
    for term in active:
        keys += _term_keys(term)
    return {
        "artifact": artifact.name,
        "network": artifact.network,
        "terms": [[t.fn, t.rows] for t in active],
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
        dim: int,
        num_classes: int,
        needs: dict[str, str] | None = None,
    ) -> tuple[nn.Module, str, bool]:
        """(EMA network, key, reused?). train_fn(checkpoint_dir) trains on a miss, resuming if it can."""
        identity = artifact_identity(artifact, config, needs)
        key = f"{artifact.name}-{artifact_key(identity)}"
        folder = self.root / key
        folder.mkdir(exist_ok=True)
        model_file = folder / "model.pt"
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one trainer per key; others wait and then reuse
            reused = model_file.exists()
            if reused:
                net = build(artifact, config, dim, num_classes)
                net.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
                net = net.eval().requires_grad_(False)
            else:
                (folder / "identity.json").write_text(json.dumps(identity, indent=2, sort_keys=True))
                net = train_fn(folder)
                save_checkpoint(model_file, net.state_dict())
        return net, key, reused
