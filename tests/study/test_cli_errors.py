"""Bad input through the CLI: one clear line, exit 2, nothing written."""

import pytest
import yaml
from cli_helpers import run_cli, run_main


def _cli(*args, cwd, timeout=120):
    return run_cli(*args, cwd=cwd, timeout=timeout)


def _spec(tmp_path, **fields):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "storage": str(tmp_path / "studies"), **fields}))
    return path


def test_unknown_method_exits_2_before_anything_is_written(tmp_path):
    result = _cli("run", str(_spec(tmp_path, methods=["CG", "CG-XL"])), cwd=tmp_path)
    assert result.returncode == 2
    assert "methods[1]: unknown method 'CG-XL'" in result.stderr
    assert not (tmp_path / "studies").exists()


def test_empty_search_range_exits_2(tmp_path):
    result = _cli(
        "run", str(_spec(tmp_path, search={"loss.lambda_sc": {"low": 1, "high": 1}})), cwd=tmp_path
    )
    assert result.returncode == 2 and "empty range" in result.stderr


def test_malformed_spec_exits_2(tmp_path):
    (tmp_path / "broken.yaml").write_text("methods: [CG\n")
    result = _cli("run", "broken.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "malformed YAML" in result.stderr


def test_unwritable_study_directory_exits_2(tmp_path):
    # A file where the study's parent folder should be: nothing can be created below it.
    (tmp_path / "file").write_text("x")
    result = _cli(
        "run", str(_spec(tmp_path, storage=str(tmp_path / "file" / "studies"))), cwd=tmp_path
    )
    assert result.returncode == 2 and "not writable" in result.stderr
    assert (tmp_path / "file").read_text() == "x"


def test_unreachable_ray_address_exits_2(tmp_path):
    result = _cli("run", str(_spec(tmp_path, address="127.0.0.1:1")), cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot reach the Ray cluster" in result.stderr
    assert not (tmp_path / "studies").exists()


def test_not_a_study_directory_exits_2(tmp_path):
    result = _cli("table", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "not a study folder" in result.stderr


def test_dashboard_on_a_folder_that_is_not_a_study_exits_2_and_writes_nothing(tmp_path):
    result = run_main("dashboard", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "not a study folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def _write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return "spec.yaml"


BAD_INPUTS = [
    # (what, how to make the spec argument, the words the one-line error must hold)
    ("huge seed", lambda p: _write(p, "seed: 99999999999999999999\n"), "seed"),
    ("boolean num_trials", lambda p: _write(p, "num_trials: true\n"), "num_trials"),
    ("float num_trials", lambda p: _write(p, "num_trials: 1.0e+29\n"), "num_trials"),
    ("boolean label %", lambda p: _write(p, "label_percents: [true]\n"), "label_percents"),
    (
        "unknown objective",
        lambda p: _write(p, "objectives: [{metric: fidd, mode: min}]\n"),
        "'fidd'",
    ),
    (
        "bogus tracking URI",
        lambda p: _write(p, "tracking_uri: bogus://nowhere\n"),
        "unsupported scheme",
    ),
    (
        "silent tracking server",
        lambda p: _write(p, "tracking_uri: http://127.0.0.1:1\n"),
        "no MLflow server",
    ),
    ("name outside storage", lambda p: _write(p, "name: '..'\n"), "not a study name"),
    ("directory as spec", lambda p: (p / "adir").mkdir() or "adir", "is not a file"),
    (
        "binary spec",
        lambda p: (p / "b.yaml").write_bytes(b"\xff\xfe\x00\x81") and "b.yaml",
        "text YAML",
    ),
    ("YAML error", lambda p: _write(p, "name: ok\nmethods: [CG\n"), "line 3, column 1"),
    ("storage under /proc", lambda p: _write(p, "storage: /proc/studies\n"), "not writable"),
    (
        "unknown reduction",
        lambda p: _write(p, "config: {loss.sc_reduction: avg}\n"),
        "must be 'sum' or 'mean'",
    ),
    (
        "unknown classifier head",
        lambda p: _write(p, "config: {model.classifier_head: gauss}\n"),
        "must be 'plain', 'gaussian', 'energy', 'scaled' or 'denoiser', got 'gauss'",
    ),
    (
        "negative guidance scale",
        lambda p: _write(p, "guidance: {scales: [1, -2]}\n"),
        "guidance.scales[1]: must be greater than 0, got -2",
    ),
    (
        "zero guidance scale",
        lambda p: _write(p, "guidance: {scales: [0, 1]}\n"),
        "guidance.scales[0]: must be greater than 0, got 0",
    ),
    (
        "repeated guidance scale",
        lambda p: _write(p, "guidance: {scales: [1, 2, 1]}\n"),
        "guidance.scales: lists 1",
    ),
    (
        "guidance cap below the grid",
        lambda p: _write(p, "guidance: {scales: [1, 4], max_scale: 2}\n"),
        "max_scale 2 is below the largest scale 4; give max_scale >= 4",
    ),
    (
        "empty guidance grid",
        lambda p: _write(p, "guidance: {scales: []}\n"),
        "guidance.scales: must have at least 1 item",
    ),
    ("trials_per_cell 0", lambda p: _write(p, "trials_per_cell: 0\n"), "trials_per_cell"),
    (
        "storage URI no object store",
        lambda p: _write(p, "storage: ftp://host/studies\n"),
        "'ftp://host/studies' is not an object-store URI pyarrow opens",
    ),
    (
        "artifact store URI without a bucket",
        lambda p: _write(p, f"artifact_store: 's3://'\nstorage: {p / 'studies'}\n"),
        "'s3://' is not an object-store URI pyarrow opens",
    ),
    (
        "unwritable artifact store",
        lambda p: _write(p, f"artifact_store: /proc/store\nstorage: {p / 'studies'}\n"),
        "the artifact store /proc/store is not writable",
    ),
]


def _config(key, value):
    return lambda p: _write(p, f"methods: [CG, CG-SC-all]\nconfig: {{{key}: {value}}}\n")


def _twin(key, value):
    """A spec on the image twin with one bad key."""
    text = "dataset: twin\nbase_config: twin\nmethods: [CG]\n"
    return lambda p: _write(p, f"{text}objectives: [{{metric: guided_score_cos, mode: max}}]\n"
                               f"config: {{{key}: {value}}}\n")  # fmt: skip


# Values that once reached the trials unchecked or were silently changed into something else.
BAD_INPUTS += [
    ("negative sampler steps", _config("sample.num_steps", -5), "sample.num_steps must be"),
    ("zero sampler steps", _config("sample.num_steps", 0), "sample.num_steps must be"),
    ("zero eval points", _config("eval.num_points", 0), "eval.num_points must be"),
    ("one eval point", _config("eval.num_points", 1), "eval.num_points must be"),
    ("no training data", _config("data.num_train", 0), "data.num_train must be"),
    ("negative lr", _config("train.lr", -1), "train.lr must be greater than 0"),
    ("nan lr", _config("train.lr", ".nan"), "train.lr must be"),
    ("boolean steps", _config("train.steps", "true"), "train.steps must be a number"),
    ("zero width", _config("model.hidden", 0), "model.hidden must be"),
    (
        "16 TB of validation samples",
        lambda p: _write(p, "guidance: {val_num_per_class: 1000000000000}\n"),
        "guidance.val_num_per_class: must be less than or equal to 100000",
    ),
    (
        "zero validation sampler steps",
        lambda p: _write(p, "guidance: {val_num_steps: 0}\n"),
        "guidance.val_num_steps: must be greater than or equal to 1",
    ),
    (
        "validation sampler steps above the sampler's",
        lambda p: _write(p, "guidance: {val_num_steps: 50}\nconfig: {sample.num_steps: 8}\n"),
        "guidance.val_num_steps: 50 is above sample.num_steps 8",
    ),
    (
        "halving not a boolean",
        lambda p: _write(p, "guidance: {halving: sometimes}\n"),
        "guidance.halving: ",
    ),
    (
        "nan choice",
        lambda p: _write(p, "search: {loss.lambda_sc: {choices: [.nan, 1]}}\n"),
        "search.loss.lambda_sc.choices[0]",
    ),
    (
        "infinite choice",
        lambda p: _write(p, "search: {loss.lambda_sc: {choices: [.inf]}}\n"),
        "search.loss.lambda_sc.choices[0]: must be a finite number",
    ),
    (
        "infinite range",
        lambda p: _write(p, "search: {loss.lambda_sc: {low: 0.1, high: .inf}}\n"),
        "search.loss.lambda_sc.high: must be a finite number",
    ),
    (
        "nan reduction factor",
        lambda p: _write(p, "scheduler: {type: asha, reduction_factor: .nan}\n"),
        "scheduler.reduction_factor: must be a valid integer",
    ),
    (
        "tracking store under /proc",
        lambda p: _write(p, "tracking_uri: sqlite:////proc/x/mlflow.db\n"),
        "cannot create the SQLite store '/proc/x/mlflow.db'",
    ),
    (
        "log as a string",
        lambda p: _write(p, "search: {loss.lambda_sc: {low: 0.1, high: 1, log: 'false'}}\n"),
        "search.loss.lambda_sc.log: must be a valid boolean",
    ),
    ("duplicate key", lambda p: _write(p, "seed: 1\nseed: 2\n"), "duplicate key 'seed' at line 2"),
    (
        "twin class too small",
        _twin("data.twin_source_images", 40),
        "twin: class 'red square' has 4 fitting images, fewer than data.twin_components x "
        "data.twin_rank = 64",
    ),
    (
        "twin rank at the dimension",
        _twin("data.twin_rank", 768),
        "data.twin_rank must be below the images' dimension 768",
    ),
    (
        "twin without components",
        _twin("data.twin_components", 0),
        "data.twin_components must be greater than or equal to 1, got 0",
    ),
    ("repeated label %", lambda p: _write(p, "label_percents: [5, 5]\n"), "lists 5.0 twice"),
    ("repeated method", lambda p: _write(p, "methods: [CG, CG]\n"), "lists 'CG' twice"),
    (
        "one metric, two objectives",
        lambda p: _write(
            p,
            "objectives: [{metric: gen_accuracy, mode: max},\n"
            "             {metric: gen_accuracy, mode: min}]\n",
        ),
        "objectives: lists 'gen_accuracy' twice",
    ),
    ("empty storage", lambda p: _write(p, "storage: ''\n"), "storage: must have at least 1"),
    (
        "alias bomb",
        lambda p: _write(
            p,
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [{', '.join(['*' + chr(ord(c) - 1)] * 10)}]\n" for c in "bcdefgh"
            ),
        ),
        "expands to more than 100,000 YAML nodes",
    ),
    (
        "difficulty outside [0, 1]",
        lambda p: _write(
            p, "dataset: shapes\nbase_config: tiny-images\nconfig: {data.difficulty: 1.5}\n"
        ),
        "data.difficulty must be less than or equal to 1, got 1.5",
    ),
    (
        "prdc neighbours above the samples",
        lambda p: _write(
            p,
            "dataset: tiny-images\nbase_config: tiny-images\n"
            "config: {sample.num_per_class: 4, eval.prdc_k: 5}\n",
        ),
        "eval.prdc_k must be at most sample.num_per_class - 2 (2",
    ),
    (
        "scale cap below the grid",
        lambda p: _write(p, "guidance: {scales: [1, 2, 4], max_scale: 3}\n"),
        "max_scale 3 is below the largest scale 4; give max_scale >= 4",
    ),
    ("50 MB name", lambda p: _write(p, "name: " + "x" * 50_000_000 + "\n"), "at most 1 MB"),
    ("long name", lambda p: _write(p, "name: " + "x" * 100_000 + "\n"), "is not a study name"),
]


@pytest.mark.parametrize("what, make, needle", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, what, make, needle):
    spec = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    # In this process (the entry point `python -m study` is the other tests' and test_cli's).
    result = run_main("run", spec, cwd=tmp_path)
    assert result.returncode == 2, (what, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], (what, result.stderr)
    assert len(lines[0]) <= 300, lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_help_of_every_command_prints_and_exits_0(capsys):
    # `study --help` once crashed on a '%' in a help text (argparse formats help strings).
    from study.cli import main

    for argv in (["--help"], *[[c, "--help"] for c in
                 ("run", "resume", "plan", "final", "table", "export-best", "ui",
                  "dashboard")]):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0, argv
        assert "usage: study" in capsys.readouterr().out
