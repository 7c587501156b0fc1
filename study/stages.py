"""Scheduling by stage: networks several trials share are trained once, by a trial of their own,
before the trials that need them start.

A shared network is an artifact whose cache key (trainables.identity.artifact_identity) is the same
for two or more of the study's configurations and does not move with the cell's tuned knobs: the
unconditional score model of the CG family (one per seed), the "labeled" / "all" variants at 100 %
labels at the paper's knob, and, for image studies, the evaluation classifier and its reference
statistics. Each becomes a *stage trial* (a Tune trial with trainables.names.STAGE_KEY set: it
trains the method's artifacts up to that one, or prepares the evaluator, and evaluates nothing).
The searcher (study.search) hands out the stage trials first and holds back a configuration until
every stage it needs has finished, filling the other slots with configurations that need none, so
no trial slot waits on another trial's lock. A stage whose network is already in the store is
skipped; a failed stage releases its trials, which then train the network themselves as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces import cell_points
from trainables.identity import (
    adoptable,
    artifact_identity,
    artifact_key,
    cache_root,
    eval_classifier_config,
)
from trainables.names import EVALUATION_STAGE, STAGE_KEY, TUNED_KEYS
from trainables.registry import EVAL_CLASSIFIER, artifact_config, get_method
from trainables.storage import Place, stored


@dataclass(frozen=True)
class Stage:
    """One shared network: its cache folder's name, the stage trial's params, and the file whose
    presence means it is trained."""

    key: str  # <artifact>-<key>, the cache folder's name
    params: dict[str, Any]  # a trial that uses it, with STAGE_KEY = the artifact to stop after
    model: str  # <store>/<key>/model.pt (a path or an object-store URI)


def artifact_folders(config: Any) -> list[tuple[Any, str]]:
    """(artifact, cache folder name <name>-<key>) of every artifact the config's method trains,
    in order, each key over the keys of the artifacts it needs (as the trial's cache computes)."""
    folders, needs = [], {}
    for artifact in get_method(config.method).artifacts:
        key = artifact_key(artifact_identity(artifact, config, needs))
        needs[artifact.name] = key
        folders.append((artifact, f"{artifact.name}-{key}"))
    return folders


def knob_dependent(config: Any) -> dict[str, bool]:
    """Artifact name -> whether its network moves with the method's tuned knobs: one of its loss
    terms is weighted by a knob or reads one (the registry's LossTerm.knobs), or an artifact it
    needs does. Such a network is trained per trial; the others can be shared."""
    tuned = set(TUNED_KEYS.get(config.method, ()))
    out: dict[str, bool] = {}
    for artifact in get_method(config.method).artifacts:
        loss = artifact_config(artifact, config).loss
        own = any(
            term.tuned or (term.weight(loss) != 0 and tuned & set(term.knobs()))
            for term in artifact.terms
        )
        out[artifact.name] = own or any(out.get(need, False) for need in artifact.needs)
    return out


def _evaluation_stage(config: Any, point: dict) -> Stage | None:
    """The image evaluator's stage (evaluation classifier + reference statistics) when its
    classifier is neither given nor cached yet, in the study's folder or in the shared store
    (the trial copies it from there: trainables.identity.adopt); None for the toy or without
    FID."""
    if config.model.arch != "ncsnpp" or not config.eval.fid or config.eval.classifier_checkpoint:
        return None
    identity = artifact_identity(EVAL_CLASSIFIER, eval_classifier_config(config))
    key = f"{EVAL_CLASSIFIER.name}-{artifact_key(identity)}"
    model = cache_root(config) / "eval-classifiers" / key / "model.pt"
    if not model.remote and adoptable(model.local, config):
        return None
    return Stage(key, {**point, STAGE_KEY: EVALUATION_STAGE}, model.location)


def plan_stages(
    points: list[dict], resolve: Callable[[dict], Any], store: Path | None
) -> tuple[list[Stage], list[frozenset[str]]]:
    """(the stages, the stage keys each point needs) for the configurations points, each resolved
    to its trial config by resolve (StudySpec.trial_config). Networks already in the store are no
    stage (store None: every shared network is, as `study plan` draws the graph)."""
    trained = (lambda model: False) if store is None else stored
    store = Place(str(store or "artifact-store"))
    users: dict[str, list[int]] = {}
    first: dict[str, tuple[dict, str]] = {}
    configs = [resolve(point) for point in points]
    for i, (point, config) in enumerate(zip(points, configs)):
        moves = knob_dependent(config)
        for artifact, key in artifact_folders(config):
            if not moves[artifact.name]:  # the cell's knobs do not shape it: it can be shared
                users.setdefault(key, []).append(i)
                first.setdefault(key, (point, artifact.name))
    stages = [
        Stage(key, {**first[key][0], STAGE_KEY: first[key][1]}, (store / key / "model.pt").location)
        for key, used in users.items()
        if len(used) > 1 and not trained((store / key / "model.pt").location)
    ]
    needs = [set() for _ in points]
    for stage in stages:
        for i in users[stage.key]:
            needs[i].add(stage.key)
    if points:
        evaluation = _evaluation_stage(configs[0], points[0])
        if evaluation is not None and not trained(evaluation.model):
            stages.insert(0, evaluation)
            for n in needs:
                n.add(evaluation.key)
    return stages, [frozenset(n) for n in needs]


def cell_stages(
    spec: Any, study_dir: Path, cells: list[tuple[str, float]], stored: bool = True
) -> tuple[list[Stage], list[frozenset[str]]]:
    """plan_stages for the first configurations (the paper's knobs) of these (method, label %)
    cells, against the study's artifact store: the stage trials a session that opens them runs
    now (study.search), and what the live status and `study status` plan (stored False: every
    shared network, as if the store were empty)."""
    points = [cell_points([m], [p], spec.ranges())[0] for m, p in cells]
    store = spec.artifact_place(spec.study_place(study_dir)) if stored else None
    return plan_stages(points, spec.trial_config, store)


@dataclass
class StageGate:
    """The searcher's view of the stages: which to hand out next, which are done, whether a
    configuration may start."""

    pending: list[Stage] = field(default_factory=list)
    live: dict[str, Stage] = field(default_factory=dict)  # Tune trial id -> its stage
    done: set[str] = field(default_factory=set)  # finished, failed, or found in the store

    def next_stage(self, trial_id: str) -> dict | None:
        """The next stage trial's params (None when none is left to hand out)."""
        while self.pending:
            stage = self.pending.pop(0)
            if stored(stage.model):
                self.done.add(stage.key)
                continue
            self.live[trial_id] = stage
            return dict(stage.params)
        return None

    def ready(self, needs: frozenset[str]) -> bool:
        """Whether a configuration needing these stages may start: all of them done (or nothing
        left that could finish them)."""
        if not self.live and not self.pending:
            return True
        for key in needs - self.done:
            stage = next((s for s in self.live.values() if s.key == key), None)
            if stage is not None and stored(stage.model):
                self.done.add(key)  # trained (the stage trial is still writing its records)
            elif stage is not None or any(s.key == key for s in self.pending):
                return False
        return True

    def complete(self, trial_id: str) -> bool:
        """Note a finished (or failed) trial; True if it was a stage trial. A failed stage counts
        as done: its trials then train the network themselves."""
        stage = self.live.pop(trial_id, None)
        if stage is None:
            return False
        self.done.add(stage.key)
        return True

    @property
    def count(self) -> int:
        """Stage trials not yet handed out."""
        return len(self.pending)
