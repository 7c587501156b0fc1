"""The `study` command: run, resume, final, table, export-best, ui. Bad input exits 2 before any
work."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from study.spec import StudySpec

USAGE_ERROR = 2


def _table(study_dir: Path, spec: StudySpec) -> str:
    from analysis.runs import load_runs
    from analysis.tables import to_markdown, warning_flags, write_report
    from study.tracking import log_report

    runs = load_runs(spec.tracking_uri, spec.name, spec.study_id)
    objectives = [(o.metric, o.mode) for o in spec.objectives]
    table, files = write_report(runs, objectives, study_dir / "tables")
    compute = _compute(study_dir, spec, runs)
    files += compute[1]
    log_report(spec.tracking_uri, spec.name, files, spec.study_id)
    metric, mode = objectives[0]
    head = f"{run_counts(runs, metric)}; best per cell by {metric} ({mode})\n\n"
    written = ", ".join(p.name for p in files[1:])
    return (
        head
        + to_markdown(table, flags=warning_flags(runs, objectives[0], table))
        + f"\n{compute[0]}"
        + f"\nwritten: {files[0]} and {written} (also logged to the study's parent run)\n"
    )


def _compute(study_dir: Path, spec: StudySpec, runs: pd.DataFrame) -> tuple[str, list[Path]]:
    """The search's compute report (analysis.accounting) as text and tables/compute.md."""
    from analysis import accounting
    from study.tracking import parent_metrics

    wall = parent_metrics(spec.tracking_uri, spec.name, spec.study_id).get(
        "study/search_wall_seconds"
    )
    slots = spec.resources.max_concurrent_trials
    report = accounting.compute_report(runs, wall, slots)
    if not report:
        return "", []
    text = accounting.to_markdown(report, slots)
    path = study_dir / "tables" / "compute.md"
    path.write_text(text)
    return text, [path]


def run_counts(runs: pd.DataFrame, metric: str) -> str:
    """'N trial runs (F finished, ...)': every status, early stops, and how many reach the table."""
    import pandas as pd

    from trainables.names import SHARED_STAGE

    stages = runs["stage"] if "stage" in runs and len(runs) else pd.Series(dtype=object)
    final = int((stages == "final").sum())
    shared = int((stages == SHARED_STAGE).sum())
    if final or shared:  # `study final` runs have their own table; stage trials train, no more
        runs = runs[~runs["stage"].isin(["final", SHARED_STAGE])]
    if not len(runs):
        return "0 trial runs"
    status = runs["status"].value_counts()
    parts = [f"{status.get('FINISHED', 0)} finished"]
    parts += [f"{status[s]} {s.lower()}" for s in ("FAILED", "KILLED", "RUNNING") if s in status]
    early = int(runs["early_stopped"].fillna(False).astype(bool).sum())
    if early:
        parts.append(f"{early} stopped early by ASHA")
    done = runs[(runs["status"] == "FINISHED") & ~runs["early_stopped"].fillna(False).astype(bool)]
    usable = int(done[metric].notna().sum()) if metric in done else 0
    counts = f"{len(runs)} trial runs ({', '.join(parts)}; {usable} with {metric} reach the table)"
    counts += f"; {shared} stage trial(s) training shared networks" if shared else ""
    return counts + (f"; {final} final runs (tables/final.md)" if final else "")


def cmd_run(args: argparse.Namespace) -> int:
    from study.runner import (
        StudyError,
        StudyInterrupted,
        back_up_to_store,
        check_trusted,
        load_study_spec,
        run_study,
        study_dir_for,
        trust_study,
    )
    from study.spec import load_spec
    from trainables.names import SPEC_FILE

    if args.add_trials is not None and args.add_trials < 1:
        raise StudyError(
            f"--add-trials must be an integer >= 1 (trials added to every cell), "
            f"got {args.add_trials}"
        )
    if args.resume_dir is not None:
        study_dir, spec = load_study_spec(args.resume_dir)
        if args.trust:
            trust_study(study_dir)
        check_trusted(study_dir)
    else:
        spec = load_spec(args.spec)
        study_dir = study_dir_for(spec)
    print(
        f"study {spec.name!r}: {len(spec.methods)} methods x {len(spec.label_percents)} label %, "
        f"{spec.num_trials} trials -> {study_dir}",
        flush=True,
    )
    start = time.perf_counter()
    try:
        run_study(
            spec,
            resume=args.resume_dir is not None,
            verbose=not args.quiet,
            add_trials=args.add_trials or 0,
        )
    except KeyboardInterrupt as exc:
        if isinstance(exc, StudyInterrupted) or not (study_dir / SPEC_FILE).exists():
            raise
        raise StudyInterrupted(study_dir) from None
    _, spec = load_study_spec(study_dir)
    print(f"\nfinished in {time.perf_counter() - start:.0f} s\n", flush=True)
    print(_table(study_dir, spec))
    stored = back_up_to_store(spec, study_dir)
    if stored is not None:
        print(f"copied the study's databases and tables to {stored}")
    print(f"open the MLflow UI:  study ui {study_dir}")
    return 0


def _overrides(pairs: list[str]) -> dict[str, str]:
    """--set key=value pairs (values are cast by the trial config schema)."""
    from study.runner import StudyError

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
    from study.runner import check_trusted, final_points, load_study_spec, run_final

    overrides = _overrides(args.set)
    study_dir, spec = load_study_spec(args.study_dir)
    points = final_points(study_dir, spec, args.seeds, overrides)  # reads MLflow only
    check_trusted(study_dir)
    start = time.perf_counter()
    count = run_final(study_dir, spec, seeds=args.seeds, verbose=not args.quiet, points=points)
    print(f"\n{count} final runs in {time.perf_counter() - start:.0f} s\n", flush=True)
    print(_table(study_dir, spec))
    final = study_dir / "tables" / "final.md"
    if final.exists():
        print(final.read_text())
        print(f"written: {final} and final.csv")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from study.plan import make_plan, to_text
    from study.spec import load_spec

    spec = load_spec(args.spec, check_data=False)  # plans need no data
    print(to_text(spec, make_plan(spec)))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from study.runner import load_study_spec

    study_dir, spec = load_study_spec(args.study_dir)
    print(_table(study_dir, spec))
    return 0


def cmd_export_best(args: argparse.Namespace) -> int:
    from analysis.runs import load_runs
    from analysis.tables import export_best
    from study.runner import StudyError, load_study_spec

    study_dir, spec = load_study_spec(args.study_dir)
    runs = load_runs(spec.tracking_uri, spec.name, spec.study_id)
    objective = (spec.objectives[0].metric, spec.objectives[0].mode)
    if (
        args.trial is not None
        and not ((runs["trial_id"] == args.trial) & (runs["status"] == "FINISHED")).any()
    ):
        raise StudyError(
            f"--trial {args.trial}: no finished trial with that id in {study_dir}; "
            "the ids are in tables/pareto.md and the MLflow runs' trial_id tag"
        )
    written = export_best(
        runs,
        {**spec.to_dict(), "storage": str(study_dir.parent / f"{spec.name}-final")},
        objective,
        study_dir / "best",
        trial_id=args.trial,
    )
    if not written:
        print(f"no finished trials in {study_dir}: nothing to export", file=sys.stderr)
        return 1
    for path in written:
        print(f"{path}    (run it: study run {path})")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from study.runner import load_study_spec

    study_dir, spec = load_study_spec(args.study_dir)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        spec.tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    print(f"MLflow UI for {study_dir}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)", flush=True)
    return subprocess.call(cmd, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


SERVER_BACKENDS = ("sqlite", "postgresql", "mysql")


def _server_command(args: argparse.Namespace) -> tuple[list[str], Path]:
    """The `mlflow server` command line for `study server`, checked before anything starts:
    (command, store folder). StudyError for a bad backend, an unwritable store or a busy port."""
    import socket

    from study.runner import StudyError, check_writable

    if not 1 <= args.port <= 65535 or args.workers < 1:
        raise StudyError(
            f"--port must be 1-65535 and --workers >= 1, got {args.port} and {args.workers}"
        )
    store = Path(args.store).expanduser().resolve()
    check_writable(store, f"the server's store {store} is not writable; give --store a folder")
    backend = args.backend or f"sqlite:///{store / 'mlflow.db'}"
    if backend.split(":", 1)[0].split("+")[0] not in SERVER_BACKENDS:
        raise StudyError(
            f"--backend {backend!r}: use a SQL database URI ({', '.join(SERVER_BACKENDS)}), e.g. "
            "postgresql://user@host/mlflow (needs psycopg2) or leave it out for SQLite in --store"
        )
    with socket.socket() as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError:
            raise StudyError(
                f"cannot listen on {args.host}:{args.port} (in use or not this machine's "
                "address); choose another --port / --host"
            ) from None
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend]
    cmd += ["--artifacts-destination", str(store / "artifacts"), "--serve-artifacts"]
    cmd += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    return cmd, store


def cmd_server(args: argparse.Namespace) -> int:
    """The team's MLflow tracking server (SQL backend, artifacts served from --store)."""
    cmd, store = _server_command(args)
    store.mkdir(parents=True, exist_ok=True)
    url = f"http://{args.host}:{args.port}"
    print(f"MLflow tracking server at {url} (store {store}); Ctrl-C stops it", flush=True)
    print(f"studies log to it with the spec line:  tracking_uri: {url}", flush=True)
    if args.host not in ("127.0.0.1", "localhost"):
        print("note: the server has no authentication; bind it to a trusted network only")
    return subprocess.call(cmd, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def _add_run_and_resume(sub: Any) -> None:
    """study run [SPEC]; study resume DIR [--trust] [--add-trials N]."""
    run = sub.add_parser(
        "run", help="run a study from a spec file or preset (default: the toy study)"
    )
    run.add_argument("spec", nargs="?", default=None, help="YAML spec file or preset name")
    run.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    run.set_defaults(func=cmd_run, resume_dir=None, trust=False, add_trials=None)
    resume = sub.add_parser("resume", help="resume an interrupted study")
    resume.add_argument("resume_dir", metavar="DIR")
    resume.add_argument("--quiet", action="store_true")
    resume.add_argument(
        "--trust",
        action="store_true",
        help="resume a study folder this user's 'study run' did not create (its Tune state is "
        "unpickled: only for folders you trust)",
    )
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
    final.add_argument("--quiet", action="store_true", help="no per-epoch progress")
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
    ui = sub.add_parser("ui", help="start the MLflow UI for a study on 127.0.0.1")
    ui.add_argument("study_dir", metavar="DIR")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    server = sub.add_parser(
        "server", help="start the team's MLflow tracking server (studies log with tracking_uri)"
    )
    server.add_argument(
        "--store",
        default="~/.cache/sc-guidance/mlflow-server",
        help="folder of its SQLite database and run artifacts (a shared path on a cluster)",
    )
    server.add_argument("--backend", default=None, help="SQL database URI instead of SQLite")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--workers", type=int, default=2, help="server worker processes")
    server.set_defaults(func=cmd_server)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors in input print one line and exit 2."""
    from study.runner import StudyError
    from study.spec import SpecError

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, StudyError) as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt as exc:
        where = getattr(exc, "study_dir", None) or getattr(args, "resume_dir", None) or "DIR"
        print(f"\nstudy: interrupted; resume with: study resume {where}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
