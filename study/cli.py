"""The `study` command: run, resume, final, table, export-best, ui. Bad input exits 2 before any
work."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.ledger import LEDGER_FILE, StudyNotReady, ledger_runs
from study.plan import make_plan, to_text
from study.runner import (
    StudyError,
    StudyInterrupted,
    back_up_to_store,
    check_tracking_store,
    final_points,
    load_study_spec,
    rebuild_runs,
    release_leases,
    run_final,
    run_study,
    study_dir_for,
)
from study.server import check_port, server_launch
from study.spec import SpecError, load_spec
from study.stages import cell_stages
from study.views import VIEW_TITLES, view_path
from trainables.names import SPEC_FILE, cell_label
from trainables.records import RecordError, sessions

if TYPE_CHECKING:
    import pandas as pd

    from study.spec import StudySpec

USAGE_ERROR = 2


def _table(study_dir: Path, spec: StudySpec, runs: pd.DataFrame | None = None) -> str:
    """Write the tables and figures, log them to the study's parent run, return the console text:
    the run counts, the compact comparison, the compute report and what was written. runs: the
    study's ledger frame when the caller has read it (analysis.ledger.ledger_runs)."""
    from analysis.console import console_table
    from analysis.figures import write_figures
    from analysis.report import write_report
    from analysis.summary import budget_line, run_counts, write_compute
    from study.tracking import log_report

    place = spec.study_place(study_dir)
    runs = ledger_runs(place, spec.name) if runs is None else runs
    objectives = [(o.metric, o.mode) for o in spec.objectives]
    keep_written_tables(runs, study_dir)
    cells = [cell_label(m, p) for m, p in spec.cell_budgets()]
    tables = study_dir / "tables"
    _, files = write_report(runs, objectives, tables, cells)
    slots = spec.resources.max_concurrent_trials
    compute, compute_text = write_compute(runs, sessions(place, "search"), slots, tables)
    files += compute
    figures = write_figures(runs, objectives, study_dir)
    log_report(spec.tracking_uri, spec.name, files + figures, spec.study_id)
    metric, _ = objectives[0]
    written = budget_line(runs, objectives[0], study_dir)
    written += f"tables: {study_dir / 'tables'} ({len(files)} files: comparison.md, ...)"
    if figures:
        count = len({p.stem for p in figures})
        written += f"\nfigures: {study_dir / 'figures'} ({count} figures, .pdf and .png)"
    return (
        f"{run_counts(runs, metric)}\n{compute_text}{written}\n"
        f"(also logged to the study's parent run)\nMLflow UI:  study ui {study_dir}\n\n"
        + console_table(runs, objectives)
    )


def keep_written_tables(runs: pd.DataFrame, study_dir: Path) -> None:
    """Refuse to rebuild tables from a ledger holding none of the study's trials when tables were
    written before: lost trial records must not empty them."""

    written = study_dir / "tables" / "comparison.md"
    if len(runs) or not written.exists() or "(no finished trials)" in written.read_text():
        return
    raise StudyError(
        f"the study's trial records ({study_dir / 'trials'}) hold none of its trials, but "
        f"{written} was written from them; restore them (a backup, or the study's object-store "
        "copy); the tables were kept"
    )


STUDY_FAILED = 1  # exit status of a study some cell of which has no finished trial


def _report_failures(study_dir: Path, spec: StudySpec) -> int:
    """Print the failed cells (stderr, one line each) and return the exit status."""
    from analysis.summary import failed_cells

    runs = ledger_runs(spec.study_place(study_dir), spec.name)
    lines = failed_cells(runs, spec.methods, spec.label_percents, spec.objectives[0].metric)
    if not lines:
        return 0
    cells = len(spec.methods) * len(spec.label_percents)
    print(f"study: {len(lines)} of {cells} cells have no finished trial:", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    print(f"study: fix the cause, then: study resume {study_dir}", file=sys.stderr)
    return STUDY_FAILED


def cmd_run(args: argparse.Namespace) -> int:

    if args.add_trials is not None and args.add_trials < 1:
        raise StudyError(
            f"--add-trials must be an integer >= 1 (trials added to every cell), "
            f"got {args.add_trials}"
        )
    if args.resume_dir is not None:
        study_dir, spec = load_study_spec(args.resume_dir)
        check_ledger(study_dir, spec)
    else:
        spec = load_spec(args.spec)
        study_dir = study_dir_for(spec)
    print(f"{study_header(spec, study_dir)}\nstudy folder: {study_dir}", flush=True)
    quiet_libraries(args.verbose)
    start = time.perf_counter()
    try:
        run_study(
            spec,
            resume=args.resume_dir is not None,
            verbose=verbosity(args),
            add_trials=args.add_trials or 0,
        )
    except KeyboardInterrupt as exc:
        if isinstance(exc, StudyInterrupted) or not (study_dir / SPEC_FILE).exists():
            raise
        raise StudyInterrupted(study_dir) from None
    _, spec = load_study_spec(study_dir, view=True)  # checked before the run
    print(f"\nfinished in {time.perf_counter() - start:.0f} s\n", flush=True)
    text = _table(study_dir, spec)
    stored = back_up_to_store(spec, study_dir)
    if stored is not None:
        print(f"copied the study's databases, tables and figures to {stored}")
    print(text, end="", flush=True)
    return _report_failures(study_dir, spec)


def check_ledger(study_dir: Path, spec: StudySpec) -> None:
    """Refuse to resume a folder study whose Optuna database (each cell's trials, parameters and
    values) is unreadable, or gone while trials have run: resuming would search as if nothing
    had; or whose trial records cannot be read (StudyError, StudyNotReady or RecordError naming
    the file; nothing is written)."""
    if spec.study_place(study_dir).remote:
        return
    ledger = study_dir / LEDGER_FILE
    if not ledger.exists():
        records = study_dir / "trials"
        if records.is_dir() and any(records.iterdir()):
            raise StudyError(
                f"{ledger} is missing but the study has run trials; restore it from a backup "
                "(its cells' searches are kept there) before resuming"
            )
        return
    ledger_runs(spec.study_place(study_dir), spec.name)  # the ledger and every record readable


def study_header(spec: StudySpec, study_dir: Path) -> str:
    """'study toy: 8 methods x 2 label % = 16 cells; 22 search trials + 2 stage trials', the
    shared networks the artifact store holds already said reused (no stage trial trains them)."""

    cells = list(spec.cell_budgets())
    shared = len(cell_stages(spec, study_dir, cells, stored=False)[0])
    try:
        staged = len(cell_stages(spec, study_dir, cells)[0])
    except OSError:  # an object store that does not answer: the run's own check names it next
        staged = shared
    head = (
        f"study {spec.name!r}: {len(spec.methods)} methods x {len(spec.label_percents)} label % "
        f"= {len(cells)} cells; {spec.num_trials} search trials"
    )
    head += f" + {staged} stage trial(s) of shared networks" if staged else ""
    reused = shared - staged
    return head + (
        f" ({reused} shared network(s) reused from the artifact store)" if reused > 0 else ""
    )


def verbosity(args: argparse.Namespace) -> int:
    """0 (--quiet: nothing live), 1 (trial ends, counts and the status table), 2 (--verbose: every
    epoch and the libraries' own messages)."""
    return 0 if args.quiet else 2 if args.verbose else 1


def quiet_libraries(verbose: bool) -> None:
    """Switch off the libraries' chatter unless --verbose: Optuna's study-created lines, MLflow's
    database migrations, Tune's experiment box and TensorBoard hint (its old reporter prints
    nothing at verbosity 0), Tune's tracebacks of failed trials."""

    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A failed trial's traceback and Tune's "Trials did not complete": the study says which cells
    # failed and why in one line each (failed_cells), MLflow holds the error on the run.
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Ray's note that token authentication is on (it is, and stays on).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _overrides(pairs: list[str]) -> dict[str, str]:
    """--set key=value pairs (values are cast by the trial config schema)."""

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StudyError(
                f"--set {pair!r}: expected key=value, e.g. --set sample.num_per_class=500"
            )
        out[key.strip()] = value.strip()
    return out


def cmd_final(args: argparse.Namespace) -> int:

    overrides = _overrides(args.set)
    study_dir, spec = load_study_spec(args.study_dir)
    points = final_points(  # reads MLflow only
        study_dir, spec, args.seeds, overrides, allow_missing=args.allow_missing
    )
    quiet_libraries(args.verbose)
    start = time.perf_counter()
    count = run_final(study_dir, spec, seeds=args.seeds, verbose=verbosity(args), points=points)
    print(f"\n{count} final runs in {time.perf_counter() - start:.0f} s\n", flush=True)
    print(_table(study_dir, spec))
    final = study_dir / "tables" / "final.md"
    if final.exists():
        print(final.read_text())
        print(f"written: {final} and final.csv")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:

    spec = load_spec(args.spec, check_data=False)  # plans need no data
    print(to_text(spec, make_plan(spec, check_store=True)))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """study table DIR: the tables and figures again; trial runs the MLflow store lacks (a lost
    or replaced store) are first written again from the trial records."""
    study_dir, spec = load_study_spec(args.study_dir, store=False, view=True)
    # The ledger and the records read (or refused: StudyNotReady, RecordError) before anything is
    # written again.
    runs = ledger_runs(spec.study_place(study_dir), spec.name)
    check_tracking_store(spec, study_dir, missing_ok=True)
    rebuilt = rebuild_runs(spec, study_dir)
    if rebuilt:
        print(f"wrote {rebuilt} trial runs again from {study_dir / 'trials'}")
    # A rebuilt run's id is written into its trial's records: the frame is read again then.
    print(_table(study_dir, spec, None if rebuilt else runs))
    return 0


def cmd_export_best(args: argparse.Namespace) -> int:
    from analysis.tables import completed, export_best

    study_dir, spec = load_study_spec(args.study_dir, store=False, view=True)
    runs = ledger_runs(spec.study_place(study_dir), spec.name)
    objective = (spec.objectives[0].metric, spec.objectives[0].mode)
    if (
        args.trial is not None
        and not ((runs["trial_id"] == args.trial) & (runs["status"] == "FINISHED")).any()
    ):
        raise StudyError(
            f"--trial {args.trial}: no finished trial with that id in {study_dir}; "
            "the ids are in tables/pareto.md and the MLflow runs' trial_id tag"
        )
    if completed(runs).empty:
        raise StudyError(
            f"no finished trials in {study_dir}: nothing to export; "
            f"run or resume the study first (study resume {study_dir})"
        )
    written = export_best(
        runs,
        {**spec.to_dict(), "storage": str(study_dir.parent / f"{spec.name}-final")},
        objective,
        study_dir / "best",
        trial_id=args.trial,
    )
    for path in written:
        print(f"{path}    (run it: study run {path})")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on the study's store, opened at the study's experiment (its runs view)."""
    from study.tracking import rehome_artifacts

    study_dir, spec = load_study_spec(args.study_dir, view=True)
    check_port("127.0.0.1", args.port)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", spec.tracking_uri]
    cmd += ["--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    base = f"http://127.0.0.1:{args.port}/"
    rehome_artifacts(spec.tracking_uri or "")  # a copied study's pictures are its own
    experiment_id = study_experiment_id(spec)
    path = view_path(experiment_id, "search") if experiment_id else ""
    print(f"MLflow UI for {study_dir}: {base}{path}  (Ctrl-C stops it)", flush=True)
    if experiment_id:
        for key, title in list(VIEW_TITLES.items())[1:]:
            print(f"  {title}: {base}{view_path(experiment_id, key)}", flush=True)
    return subprocess.call(cmd, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the study's optuna.db on 127.0.0.1: each cell's search, its objective
    named, and a note per cell linking every trial to its MLflow run (as `study ui` serves it)."""
    from optuna_dashboard import run_server

    study_dir, spec = load_study_spec(args.study_dir, view=True)
    ledger = study_dir / "optuna.db"
    if not ledger.exists():
        raise StudyError(f"{ledger} does not exist: no cell of {study_dir} has started a search")
    check_ledger(study_dir, spec)
    check_port("127.0.0.1", args.port)
    link_runs(study_dir, spec, args.ui_port)
    print(f"optuna-dashboard for {study_dir}: http://127.0.0.1:{args.port}/  (Ctrl-C stops it; "
          f"the MLflow links open with: study ui {study_dir} --port {args.ui_port})",
          flush=True)  # fmt: skip
    run_server(f"sqlite:///{ledger}", host="127.0.0.1", port=args.port)
    return 0


def link_runs(study_dir: Path, spec: StudySpec, ui_port: int) -> int:
    """Write each cell's Optuna study a note (optuna-dashboard renders it as Markdown): a table of
    its trials with their knobs, value and a link to the trial's MLflow run; the notes written."""
    import optuna
    from optuna_dashboard import save_note

    runs = ledger_runs(spec.study_place(study_dir), spec.name)
    run_of = dict(zip(runs["trial_id"], runs["run_id"])) if len(runs) else {}
    base = f"http://127.0.0.1:{ui_port}/{experiment_path(spec)}".split("/runs?")[0]
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    written = 0
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        lines = ["| trial | knobs | value | MLflow run |", "|---|---|---|---|"]
        for trial in study.get_trials(deepcopy=False):
            run = run_of.get(trial.user_attrs.get("tune_trial_id"))
            link = f"[{run[:8]}]({base}/runs/{run}{MODEL_TRAINING_VIEW})" if run else ""
            values = ", ".join(f"{v:.4g}" for v in trial.values or [])
            knobs = ", ".join(f"{k}={v:.3g}" for k, v in trial.params.items())
            lines.append(f"| {trial.number} | {knobs} | {values} | {link} |")
        save_note(study, f"### {summary.study_name}\n\n" + "\n".join(lines) + "\n\n"
                  f"(links open while `study ui {study_dir} --port {ui_port}` runs)")  # fmt: skip
        written += 1
    return written


# MLflow 3.17's UI picks its GenAI or model-training layout from this query parameter (else from
# the browser's last choice, GenAI by default), not from the experiment's kind tag: measured with
# headless Chromium, the bare experiment URL opens the GenAI traces overview, tag or not.
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"


def experiment_path(spec: StudySpec) -> str:
    """'#/experiments/<id>/runs?viewStateShareKey=search&workflowType=machine_learning': the study's
    search trials in the MLflow UI's model-training layout, in the study's view of them
    (study.views); '' if the store has no such experiment."""
    experiment_id = study_experiment_id(spec)
    return view_path(experiment_id, "search") if experiment_id else ""


def study_experiment_id(spec: StudySpec) -> str | None:
    """The study's MLflow experiment id; None if its store has no such experiment (or no store)."""
    from mlflow.tracking import MlflowClient

    uri = spec.tracking_uri or ""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None  # no store yet: reading must not create one
    experiment = MlflowClient(uri).get_experiment_by_name(spec.name)
    return None if experiment is None else experiment.experiment_id


def cmd_plot(args: argparse.Namespace) -> int:
    """study plot DIR: the paper figures (analysis.figures) of a finished study."""
    from analysis.figures import write_figures
    from analysis.results import load_study

    results = load_study(args.study_dir)
    written = write_figures(results.runs, results.objectives, results.study_dir)
    stems: dict[Path, list[str]] = {}
    for path in sorted(written):
        stems.setdefault(path.with_suffix(""), []).append(path.name)
    for stem, files in stems.items():
        print("  ".join(str(stem.parent / f) for f in files))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """study status DIR: the live status of a study running elsewhere, from its stores."""
    from study.status import status_text

    print(status_text(args.study_dir), end="")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    """The team's MLflow tracking server (SQL backend, artifacts served from --store, basic-auth
    logins unless --no-auth): study.server."""
    launch = server_launch(args)
    url = f"http://{args.host}:{args.port}"
    print(f"MLflow tracking server at {url} (store {launch.store}); Ctrl-C stops it", flush=True)
    print(f"studies log to it with the spec line:  tracking_uri: {url}", flush=True)
    if launch.login:
        print(launch.login, flush=True)
    elif args.host not in ("127.0.0.1", "localhost"):
        print("note: --no-auth: anyone who reaches this address can read and write every study")
    return subprocess.call(launch.cmd, env=launch.env)


def _add_verbosity(command: Any) -> None:
    """--quiet / --verbose."""
    group = command.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="no live progress, only the table")
    group.add_argument(
        "--verbose",
        action="store_true",
        help="every epoch's loss and the libraries' own messages (Ray, Optuna, MLflow)",
    )


def _add_run_and_resume(sub: Any) -> None:
    """study run [SPEC]; study resume DIR [--add-trials N]."""
    run = sub.add_parser(
        "run", help="run a study from a spec file or preset (default: the toy study)"
    )
    run.add_argument("spec", nargs="?", default=None, help="YAML spec file or preset name")
    _add_verbosity(run)
    run.set_defaults(func=cmd_run, resume_dir=None, add_trials=None)
    resume = sub.add_parser("resume", help="resume an interrupted study")
    resume.add_argument("resume_dir", metavar="DIR")
    _add_verbosity(resume)
    resume.add_argument(
        "--add-trials",
        type=int,
        default=None,
        metavar="N",
        help="raise every cell's budget by N trials and run them (extends a finished study)",
    )
    resume.set_defaults(func=cmd_run, spec=None)


def _add_plan_and_final(sub: Any) -> None:
    """study plan [SPEC]; study final DIR [--seeds N] [--set KEY=VALUE ...]."""
    plan = sub.add_parser(
        "plan", help="print a spec's stage graph and planned vs naive compute; runs nothing"
    )
    plan.add_argument("spec", nargs="?", default=None, help="YAML spec file or preset name")
    plan.set_defaults(func=cmd_plan)
    final = sub.add_parser(
        "final",
        help="run every cell's chosen configuration over N seeds in the study; tables/final.md",
    )
    final.add_argument("study_dir", metavar="DIR")
    final.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    final.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="trial config override for the final runs, e.g. sample.num_per_class=5000 (repeat)",
    )
    final.add_argument(
        "--allow-missing",
        action="store_true",
        help="run the cells that have a finished search trial and list the others in final.md "
        "(default: refuse while any cell has none)",
    )
    _add_verbosity(final)
    final.set_defaults(func=cmd_final)


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(
        prog="study",
        description="Classifier-guided score-based generation studies (Ray Tune, Optuna, MLflow).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_run_and_resume(sub)
    _add_plan_and_final(sub)
    table = sub.add_parser("table", help="print and write the comparison table")
    table.add_argument("study_dir", metavar="DIR")
    table.set_defaults(func=cmd_table)
    export = sub.add_parser(
        "export-best", help="export the best config per (method, label %%) as run specs"
    )
    export.add_argument("study_dir", metavar="DIR")
    export.add_argument(
        "--trial",
        metavar="ID",
        default=None,
        help="export this finished trial instead (e.g. a Pareto-front point)",
    )
    export.set_defaults(func=cmd_export_best)
    plot = sub.add_parser("plot", help="write the paper figures (PDF and PNG) to DIR/figures")
    plot.add_argument("study_dir", metavar="DIR")
    plot.set_defaults(func=cmd_plot)
    status = sub.add_parser(
        "status", help="per-cell progress and time left of a study (running here or elsewhere)"
    )
    status.add_argument("study_dir", metavar="DIR")
    status.set_defaults(func=cmd_status)
    ui = sub.add_parser("ui", help="start the MLflow UI for a study on 127.0.0.1")
    ui.add_argument("study_dir", metavar="DIR")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    dashboard = sub.add_parser(
        "dashboard", help="start optuna-dashboard on a study's cell searches on 127.0.0.1"
    )
    dashboard.add_argument("study_dir", metavar="DIR")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument(
        "--ui-port", type=int, default=5000, help="`study ui`'s port, for the trials' MLflow links"
    )
    dashboard.set_defaults(func=cmd_dashboard)
    _add_server(sub)
    return p


def _add_server(sub: Any) -> None:
    """`study server`'s arguments."""
    server = sub.add_parser(
        "server", help="start the team's MLflow tracking server (studies log with tracking_uri)"
    )
    server.add_argument(
        "--store",
        default="~/.cache/sc-guidance/mlflow-server",
        help="folder of its SQLite database and run artifacts (a shared path on a cluster)",
    )
    server.add_argument(
        "--backend",
        default=None,
        help="SQL database URI instead of SQLite, e.g. postgresql://user@host/mlflow "
        "(pip install '.[server]')",
    )
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--workers", type=int, default=2, help="server worker processes")
    server.add_argument(
        "--no-auth",
        action="store_true",
        help="no logins (MLflow's basic-auth app is on by default); only on a trusted network",
    )
    server.set_defaults(func=cmd_server)


def _stop_local_ray() -> None:
    """Shut down the Ray session this command started, so that none of its processes outlives
    the command (a cluster given by address is only disconnected from)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors in input print one line and exit 2."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, StudyError, StudyNotReady, RecordError) as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt as exc:
        where = getattr(exc, "study_dir", None) or getattr(args, "resume_dir", None) or "DIR"
        print(f"\nstudy: interrupted; resume with: study resume {where}", file=sys.stderr)
        return 130
    finally:
        release_leases()
        _stop_local_ray()


if __name__ == "__main__":
    sys.exit(main())
