"""The obvious alternative to a study, measured side by side with it (issue 41, item 5).

The baseline: one plain Ray Tune + OptunaSearch search (one joint TPE space over method, label %,
the method's lambdas and one guidance scale per trial drawn from the spec's grid),
MLflowLoggerCallback, every trial retraining what it needs with trainables' own functions
(`train_method`, `TrialEvaluator`: validation at its one scale, then the test evaluation), as many
trials as the study's search has, the study's resources (CPUs per trial, trials at a time).

    python bench/peer_baseline.py baseline SPEC OUT     # the baseline alone
    python bench/peer_baseline.py compare SPEC OUT --pairs 2 [--full]

compare runs `python -m study run` on the spec and the baseline alternately (pair 0: study first,
pair 1: baseline first, ...), each study with a fresh artifact store, both with the same evaluation
cache (warmed first: the evaluation classifier and reference statistics are the yardstick, not the
work compared). --full adds, per pair, the study with the sweep as it was before issue 41 (every
scale sampled in full at the full sampler steps: guidance.halving false, val_num_steps =
sample.num_steps), for its scale choices and sampling. It prints the wall, CPU and sampling ratios
and every cell's answer side by side, and writes OUT/compare.json. CPU: user + system seconds of
the command's whole process tree (Ray's workers included), sampled from /proc every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COST_KEYS = ("cost/sampling_score_evals", "cost/val_sampling_score_evals")


def _spec(source: str, **changes: Any):
    from study.loading import load_raw
    from study.spec import validate

    raw = load_raw(source)
    raw.update(changes)
    return raw, validate(raw)


class Space:
    """The joint define-by-run space: method, label %, the method's tuned knobs, one scale (a
    class, not a closure: Tune pickles its searcher with the space)."""

    def __init__(self, spec):
        self.methods, self.percents = list(spec.methods), list(spec.label_percents)
        self.search = spec.to_dict().get("search", {})
        self.scales = list(spec.guidance.scales)

    def __call__(self, trial) -> dict[str, Any]:
        from trainables.names import GUIDED, TUNED_KEYS

        method = trial.suggest_categorical("method", self.methods)
        point = {"method": method}
        point["label_percent"] = trial.suggest_categorical("label_percent", self.percents)
        for key in TUNED_KEYS.get(method, ()):
            r = self.search[key]
            point[key] = (
                trial.suggest_categorical(key, list(r["choices"]))
                if r.get("choices") is not None
                else trial.suggest_float(key, r["low"], r["high"], log=r.get("log", True))
            )
        if method in GUIDED:
            point["guidance_scale"] = trial.suggest_categorical("guidance_scale", self.scales)
        return point


def baseline_trial(config: dict) -> None:
    """One baseline trial: train every network the point needs, validate at its one scale, test."""
    import ray.tune
    import torch

    from study.spec import validate
    from trainables.evaluation import TrialEvaluator
    from trainables.fit import TrainingSet, train_method
    from trainables.ray_worker import load_data

    torch.set_num_threads(1)
    spec = validate(config["raw"])
    point = {"method": config["method"], "data.label_percent": config["label_percent"]}
    point |= {k: v for k, v in config.items() if k.startswith("loss.")}
    scale = config.get("guidance_scale")
    if scale is not None:
        grid = {"sample.guidance_grid": (scale,), "sample.guidance_cap": scale}
        point |= {"sample.guidance_scale": scale, **grid}
    trial = spec.trial_config(point)
    data = load_data(trial)
    started = time.perf_counter()
    split = TrainingSet.split(
        data.x, data.y, data.num_classes, trial.data.label_percent, trial.data.split_seed
    )
    networks = train_method(trial, split)
    trained = time.perf_counter()
    evaluator = TrialEvaluator(trial, data)
    objectives = tuple((o.metric, o.mode) for o in spec.objectives)
    sweep = evaluator.validate(networks, (scale or trial.sample.guidance_scale,), objectives)
    metrics, _ = evaluator(networks, scale=sweep.scale)
    result = {f"val/{m}": sweep.metrics[m] for m, _ in objectives}
    result |= {m: metrics[m] for m, _ in objectives}
    if scale is not None:  # a guided trial's scale (Cond has none)
        result["guidance_scale"] = sweep.scale
    result |= {
        COST_KEYS[0]: evaluator.sampling_score_evals(),
        COST_KEYS[1]: evaluator.val_sampling_score_evals,
        "cost/train_seconds": trained - started,
        "cost/eval_seconds": time.perf_counter() - trained,
    }
    ray.tune.report(result)


def run_baseline(source: str, out: Path) -> None:
    """The baseline search of the spec's study, recorded in out (Tune's folder, MLflow store)."""
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    raw, spec = _spec(source)
    objective = spec.objectives[0]
    trials = sum(spec.cell_budgets().values())
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"
    ray.init(num_cpus=spec.resources.cpus_per_trial * spec.resources.max_concurrent_trials)
    searcher = OptunaSearch(
        space=Space(spec), metric=f"val/{objective.metric}", mode=objective.mode, seed=spec.seed
    )
    trainable = tune.with_resources(baseline_trial, {"cpu": spec.resources.cpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space={"raw": raw},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=trials,
            max_concurrent_trials=spec.resources.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name="baseline",
            storage_path=str(out / "ray"),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{out / 'mlflow.db'}", experiment_name=spec.name
                )
            ],
            verbose=0,
        ),
    )
    results = tuner.fit()
    rows = []
    for result in results:
        if result.error is None:
            cfg = {k: v for k, v in result.config.items() if k != "raw"}
            rows.append({**cfg, **{k: v for k, v in result.metrics.items() if _plain(v)}})
    (out / "trials.json").write_text(json.dumps(rows, indent=1))
    ray.shutdown()
    print(f"baseline: {len(rows)} of {trials} trials finished; {out / 'trials.json'}")


def _plain(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


class TreeCPU:
    """User + system CPU seconds of a process and its descendants, sampled from /proc."""

    def __init__(self, pid: int):
        self.root, self.seen, self._stop = pid, {}, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _stat(pid: str) -> tuple[int, float] | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _loop(self) -> None:
        while not self._stop.is_set():
            stats = {p: s for p in os.listdir("/proc") if p.isdigit() and (s := self._stat(p))}
            tree, grew = {str(self.root)}, True
            while grew:
                more = {p for p, (ppid, _) in stats.items() if str(ppid) in tree} - tree
                tree |= more
                grew = bool(more)
            for pid in tree & stats.keys():
                self.seen[pid] = max(self.seen.get(pid, 0.0), stats[pid][1])
            self._stop.wait(0.5)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())


def _timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of cmd; raises on a non-zero exit."""
    started = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        cpu = TreeCPU(proc.pid)
        code = proc.wait()
    wall, cpu_s = time.perf_counter() - started, cpu.stop()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}; see {log}")
    return wall, cpu_s


def _study_answers(folder: Path, name: str, objective) -> tuple[dict, float]:
    """Per cell (method, label %): the best search trial's scale, validation and test value; and
    the search trials' sampling score evaluations."""
    from analysis.runs import load_runs

    runs = load_runs(f"sqlite:///{folder / 'studies' / name / 'mlflow.db'}", name)
    val = f"val/{objective.metric}"
    if val not in runs:
        raise SystemExit(f"{folder}: no search trial reported {val}; see its log.txt")
    runs = runs[runs["stage"].eq("search") & runs[val].notna()]
    rows = runs.to_dict("records")
    return _answers(rows, objective), float(sum(r[k] for r in rows for k in COST_KEYS))


def _cell(row: dict) -> str:
    return f"{row['method']} {float(row['label_percent']):g} %"


def _answers(rows: list[dict], objective) -> dict:
    val, cells = f"val/{objective.metric}", {}
    for row in rows:
        cell = _cell(row)
        better = min if objective.mode == "min" else max
        if cell not in cells or better(cells[cell][val], row[val]) == row[val]:
            cells[cell] = row
    return {
        cell: {
            "scale": row.get("guidance_scale"),
            "val": row[val],
            "test": row[objective.metric],
            "trials": sum(
                1 for r in rows if f"{r['method']} {float(r['label_percent']):g} %" == cell
            ),
        }
        for cell, row in sorted(cells.items())
    }


def _warm(raw: dict) -> None:
    """Build the evaluation classifier and reference statistics into the shared cache once."""
    from study.spec import validate
    from trainables.evaluation import TrialEvaluator
    from trainables.ray_worker import load_data

    spec = validate(raw)
    config = spec.trial_config({"method": spec.methods[0]})
    if config.model.arch == "ncsnpp":
        TrialEvaluator(config, load_data(config)).prepare()


def _run_one(kind: str, raw: dict, folder: Path) -> dict:
    """One timed run (study, full: the study with the old sweep, baseline) in folder."""
    from study.spec import validate

    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SC_GUIDANCE_ARTIFACT_STORE": str(folder / "store"),
    }
    spec_path = folder / "spec.yaml"
    if kind == "baseline":
        spec_path.write_text(yaml.safe_dump(raw))
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "baseline",
            str(spec_path),
            str(folder),
        ]
    else:
        raw = {**raw, "storage": str(folder / "studies"), "artifact_store": str(folder / "store")}
        if kind == "full":
            steps = validate(raw).trial_config({"method": raw["methods"][0]}).sample.num_steps
            raw["guidance"] = {**raw.get("guidance", {}), "halving": False, "val_num_steps": steps}
        spec_path.write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, "-m", "study", "run", str(spec_path)]
    wall, cpu = _timed(cmd, env, folder / "log.txt")
    spec = validate(raw)
    objective = spec.objectives[0]
    if kind == "baseline":
        rows = json.loads((folder / "trials.json").read_text())
        answers = _answers(rows, objective)
        sampling = float(sum(r[k] for r in rows for k in COST_KEYS))
    else:
        answers, sampling = _study_answers(folder, spec.name, objective)
    result = {"kind": kind, "wall_s": wall, "cpu_s": cpu, "sampling": sampling, "cells": answers}
    print(f"  {kind}: wall {wall:.0f} s, CPU {cpu:.0f} s, sampling {sampling:.3g}", flush=True)
    return result


def compare(source: str, out: Path, pairs: int, full: bool) -> None:
    raw, spec = _spec(source)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(raw.get("config") or {})
    config.setdefault("eval.cache_dir", str(out / "eval-cache"))
    raw = {**raw, "config": config}
    _warm(raw)
    kinds = ["study", "baseline"] + (["full"] if full else [])
    runs = []
    for pair in range(pairs):
        order = kinds[pair % len(kinds) :] + kinds[: pair % len(kinds)]
        print(f"pair {pair}: {' then '.join(order)}", flush=True)
        done = {kind: _run_one(kind, raw, out / f"pair{pair}" / kind) for kind in order}
        runs.append(done)
        _report(done, spec.objectives[0])
    (out / "compare.json").write_text(json.dumps(runs, indent=1))
    print(f"written: {out / 'compare.json'}")


def _report(done: dict, objective) -> None:
    study, base = done["study"], done["baseline"]
    print(f"  study / baseline: wall {study['wall_s'] / base['wall_s']:.2f}x, "
          f"CPU {study['cpu_s'] / base['cpu_s']:.2f}x, "
          f"sampling {study['sampling'] / base['sampling']:.2f}x")  # fmt: skip
    if "full" in done:
        old = done["full"]
        print(f"  study / the old sweep: sampling {study['sampling'] / old['sampling']:.2f}x, "
              f"wall {study['wall_s'] / old['wall_s']:.2f}x")  # fmt: skip
    kinds = [k for k in ("study", "full", "baseline") if k in done]
    head = " | ".join(f"{k} scale | {k} val {objective.metric} | {k} test" for k in kinds)
    print(f"  | cell | {head} |")
    cells = sorted(set().union(*(done[k]["cells"] for k in kinds)))
    for cell in cells:
        parts = []
        for k in kinds:
            a = done[k]["cells"].get(cell)
            parts.append(
                " | ".join(
                    ("-", "-", "not visited")
                    if a is None
                    else (_g(a["scale"]), f"{a['val']:.3g}", f"{a['test']:.3g}")
                )
            )
        print(f"  | {cell} | {' | '.join(parts)} |")


def _g(value: Any) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("baseline")
    one.add_argument("spec")
    one.add_argument("out", type=Path)
    both = sub.add_parser("compare")
    both.add_argument("spec")
    both.add_argument("out", type=Path)
    both.add_argument("--pairs", type=int, default=2)
    both.add_argument("--full", action="store_true", help="also the study with the old sweep")
    args = parser.parse_args()
    if args.command == "baseline":
        run_baseline(args.spec, args.out)
    else:
        compare(args.spec, args.out, args.pairs, args.full)


if __name__ == "__main__":
    main()
