"""What a trained network is keyed by: the exact config it depends on and the code that trains
it (an artifact's identity, whose hash names its folder in the artifact store), and where the
evaluator's own networks and statistics live. No torch: `study plan` and the stage scheduler
compute the keys without it; trainables.cache trains and loads by them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from trainables.config import ModelConfig, TrialConfig, to_flat
from trainables.registry import Artifact, artifact_config
from trainables.storage import Place

ALWAYS = ("sde.", "model.", "train.")
# The code that shapes a trained network: its source enters every key, so a changed loss, network,
# training loop or data pipeline never reuses a network trained by older code (the store is shared
# across studies and platform versions).
SHAPING_CODE = (
    "fit.py", "losses.py", "methods.py", "registry.py", "sde.py", "cache.py", "identity.py",
    "networks", "data",
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
    "data.difficulty",
    "data.num_classes",
    "data.twin_source",
    "data.twin_source_images",
    "data.twin_components",
    "data.twin_rank",
    "data.twin_shared",
)
# Settings that change how fast or how often, never what is trained.
NEUTRAL = (
    "train.channels_last", "train.checkpoint_every", "train.peak_tflops", "train.compile",
)  # fmt: skip


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


def cache_root(config: TrialConfig) -> Place:
    """eval.cache_dir (a folder or an object-store URI), else ~/.cache/sc-guidance: where the
    evaluation's yardstick lives (a study's own folder's evaluation/, study.runner)."""
    return Place(config.eval.cache_dir or "~/.cache/sc-guidance")


def data_cache(config: TrialConfig) -> str:
    """Where generated data sets (the twin's fit) are kept: the shared store when the study has
    one (eval.shared_cache_dir), else eval.cache_dir."""
    return config.eval.shared_cache_dir or config.eval.cache_dir


def _shared_twin(path: Path, config: TrialConfig) -> Path | None:
    """The same name under eval.shared_cache_dir as path has under cache_root (both folders on
    this machine; None otherwise)."""
    shared, root = config.eval.shared_cache_dir, cache_root(config)
    if not shared or Place(shared).remote or root.remote:
        return None
    return Place(shared).local / path.relative_to(root.local)


def adoptable(path: Path, config: TrialConfig) -> bool:
    """Whether the shared store holds the yardstick file path names (a trial would copy it)."""
    other = _shared_twin(path, config)
    return other is not None and other.is_file()


def adopt(path: Path, config: TrialConfig) -> bool:
    """Copy a yardstick file (an evaluation classifier's, reference statistics) the study's cache
    lacks from the shared store, where the same content-addressed name holds the same thing; True
    if copied. A study thus owns its yardstick and trains none that another study has."""
    other = _shared_twin(path, config)
    if other is None or path.exists() or not other.is_file():
        return False
    _copy(other, path)
    return True


def publish(path: Path, config: TrialConfig) -> None:
    """Copy a yardstick file the study made into the shared store (for the next study)."""
    other = _shared_twin(path, config)
    if other is not None and path.is_file() and not other.exists():
        _copy(path, other)


def _copy(source: Path, target: Path) -> None:
    """A file copied atomically (a temporary file beside the target, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    shutil.copy2(source, tmp)
    os.replace(tmp, target)


def eval_classifier_config(config: TrialConfig) -> TrialConfig:
    """The trial config with the evaluation classifier's own data, noise range and steps."""
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, label_percent=100.0),
        model=dataclasses.replace(
            config.model, classifier_head="plain", energy_rank=ModelConfig.energy_rank
        ),
        sde=dataclasses.replace(
            config.sde, sigma_max=max(config.eval.classifier_sigma_max, config.sde.sigma_min * 2)
        ),
        train=dataclasses.replace(
            config.train, steps=config.eval.classifier_steps, precision="fp32"
        ),
    )
