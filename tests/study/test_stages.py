"""Scheduling by stage (study.stages): shared networks are trained by a stage trial of their own,
and configurations that need one wait for it while the others fill the slots."""

from pathlib import Path

from study.cli import study_header
from study.progress import from_records
from study.runner import plan_stage_trials, study_progress
from study.search import CellSearcher, PointSearcher
from study.spec import load_spec, validate
from study.stages import StageGate, cell_stages, plan_stages


def _spec(tmp_path, **raw):
    # A spec whose artifact store is the test's own (the user-level default may hold networks).
    return validate({**raw, "artifact_store": str(tmp_path / "store")})


def _cell(config):
    return config["method"], config["data.label_percent"]


def test_the_default_toy_study_stages_its_score_model_and_the_shared_100_percent_cfg_model(
    tmp_path,
):
    spec = load_spec(None).replace(artifact_store=str(tmp_path / "store"))
    searcher = CellSearcher(spec, tmp_path)
    stages = {s.key.split("-")[0]: s for s in searcher.gate.pending}
    # The CG family's unconditional score model (one for every CG cell at every label %), and the
    # conditional model CFG-labeled and CFG-all share at 100 % labels; no classifier (lambda_SC
    # shapes it) and no per-cell network.
    assert set(stages) == {"score", "conditional"}
    score, conditional = stages["score"].key, stages["conditional"].key
    for cell, needs in searcher.cell_needs.items():
        method, pct = cell
        if method.startswith("CG"):
            assert needs == {score}
        elif method.startswith("CFG") and pct == 100.0:
            assert needs == {conditional}
        else:
            assert needs == frozenset()


def test_a_network_already_in_the_store_is_no_stage(tmp_path):
    spec = _spec(tmp_path, methods=["CG", "CG-SC-all"], label_percents=[5, 100])
    store = spec.artifact_dir(tmp_path)
    points = [{"method": m, "data.label_percent": p} for m in spec.methods for p in (5.0, 100.0)]
    stages, needs = plan_stages(points, spec.trial_config, store)
    assert [s.params["stage"] for s in stages] == ["score"] and all(needs)
    Path(stages[0].model).parent.mkdir(parents=True)
    Path(stages[0].model).write_bytes(b"trained")
    stages, needs = plan_stages(points, spec.trial_config, store)
    assert stages == [] and not any(needs)


def test_configurations_needing_a_stage_wait_for_it_and_the_others_fill_the_slots(tmp_path):
    spec = _spec(tmp_path, methods=["CG", "Cond"], label_percents=[5, 100])
    searcher = CellSearcher(spec, tmp_path)
    first = searcher.suggest("stage")
    assert first["stage"] == "score"
    # While the score model trains, only Cond (no shared network) starts; then the searcher waits
    # (None: "ask again later") instead of starting a CG trial that would block on the lock.
    assert {_cell(searcher.suggest(t)) for t in ("a", "b")} == {("Cond", 5.0), ("Cond", 100.0)}
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("stage", {"final": 1.0, "stage_trial": 1.0})
    assert {_cell(searcher.suggest(t)) for t in ("d", "e")} == {("CG", 5.0), ("CG", 100.0)}


def test_a_failed_stage_releases_its_trials_which_then_train_the_network_themselves(tmp_path):
    spec = _spec(tmp_path, methods=["CG"], label_percents=[5, 100])
    searcher = CellSearcher(spec, tmp_path)
    assert searcher.suggest("stage")["stage"] == "score"
    assert searcher.suggest("a") is None
    searcher.on_trial_complete("stage", None, error=True)
    assert _cell(searcher.suggest("b")) == ("CG", 5.0)


def test_a_trained_network_lets_its_trials_start_before_the_stage_trial_reports(tmp_path):
    spec = _spec(tmp_path, methods=["CG"], label_percents=[5, 100])
    searcher = CellSearcher(spec, tmp_path)
    stage = searcher.gate.pending[0]
    searcher.suggest("stage")
    assert searcher.suggest("a") is None
    Path(stage.model).parent.mkdir(parents=True, exist_ok=True)
    Path(stage.model).write_bytes(b"trained")  # the stage trial is still writing its records
    assert _cell(searcher.suggest("b")) == ("CG", 5.0)


def test_final_runs_stage_one_score_model_per_seed(tmp_path):
    spec = _spec(tmp_path, methods=["CG", "CG-DLSM"], label_percents=[5, 100])
    points = [
        {"method": m, "data.label_percent": p, "data.seed": seed, "train.seed": seed}
        for seed in (0, 1)
        for m in spec.methods
        for p in (5.0, 100.0)
    ]
    stages, needs = plan_stages(points, spec.trial_config, tmp_path)
    assert len(stages) == 2 and {s.params["train.seed"] for s in stages} == {0, 1}
    searcher = PointSearcher(points, StageGate(stages), needs)
    handed = [searcher.suggest(t) for t in ("s0", "s1")]
    assert all(h["stage"] == "score" for h in handed)
    assert searcher.suggest("x") is None  # every point needs one of the two score models
    searcher.on_trial_complete("s1", {"final": 1.0})
    ready = [searcher.suggest(t) for t in ("p0", "p1", "p2", "p3")]
    assert {p["train.seed"] for p in ready} == {1} and searcher.suggest("p4") is None
    searcher.on_trial_complete("s0", {"final": 1.0})
    assert searcher.suggest("p5")["train.seed"] == 0


def test_a_new_session_stages_again_only_the_networks_not_yet_in_the_store(tmp_path):
    spec = _spec(tmp_path, methods=["CG"], label_percents=[5, 100, 50])
    searcher = CellSearcher(spec, tmp_path)
    assert searcher.suggest("stage")["stage"] == "score"  # the driver is killed while it trains
    again = CellSearcher(spec, tmp_path)  # the next session: stages planned from the store
    assert again.suggest("again")["stage"] == "score" and again.suggest("next") is None
    again.on_trial_complete("again", {"final": 1.0})
    assert again.suggest("next")["method"] == "CG"


def test_the_status_plans_the_stage_trials_the_store_still_needs(tmp_path):
    """The live status and `study status` count a stage trial only for a shared network that is
    not stored yet (and the stage trials already ended): a score model another study stored is
    reused, so a finished study shows nothing pending and no 'resume it'."""
    spec = _spec(tmp_path, methods=["CG", "CG-SC-all"], label_percents=[5, 100], num_trials=4)
    cells = list(spec.cell_budgets())
    progress = study_progress(spec)
    assert len(progress.shared_work) == 1  # the plan: the CG family's score model
    plan_stage_trials(progress, spec, tmp_path)
    assert progress.planned("shared") == 1 and len(progress.pending()) == 5  # nothing stored yet
    assert study_header(spec, tmp_path).endswith(
        "4 search trials + 1 stage trial(s) of shared networks"
    )
    (stage,), _ = cell_stages(spec, tmp_path, cells)
    Path(stage.model).parent.mkdir(parents=True)
    Path(stage.model).write_bytes(b"trained by another study")
    reused = study_progress(spec)
    plan_stage_trials(reused, spec, tmp_path)
    assert reused.planned("shared") == 0 and len(reused.pending()) == 4
    header = study_header(spec, tmp_path)  # what `study run` prints first
    assert header.endswith("4 search trials (1 shared network(s) reused from the artifact store)")
    # Every cell's budget spent, the network stored by this study's own stage trial: it counts.
    rows = [{"trial_id": "stage", "cell": ("", 0.0), "kind": "shared", "status": "FINISHED",
             "start": 0.0, "end": 1.0}]  # fmt: skip
    rows += [
        {"trial_id": f"{cell}{i}", "cell": cell, "kind": "search", "status": "FINISHED",
         "start": 1.0, "end": 2.0, "value": 0.5}
        for cell, budget in spec.cell_budgets().items() for i in range(budget)
    ]  # fmt: skip
    done = from_records(study_progress(spec), rows)
    plan_stage_trials(done, spec, tmp_path)
    assert done.planned("shared") == 1 and done.pending() == []
    summary = done.summary(2.0, live=False)
    assert summary.startswith("search trials 4/4, stage trials 1/1; 0 running, 0 pending"), summary
