"""Bad input through the CLI: one clear line, exit 2, nothing written."""

import yaml
from cli_helpers import run_cli


def _cli(*args, cwd, timeout=120):
    return run_cli(*args, cwd=cwd, timeout=timeout)


def _spec(tmp_path, **fields):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "storage": str(tmp_path / "studies"), **fields}))
    return path


def test_unknown_method_exits_2_before_anything_is_written(tmp_path):
    result = _cli("run", str(_spec(tmp_path, methods=["CG", "CG-XL"])), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown method 'CG-XL'" in result.stderr
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
    assert result.returncode == 2 and "not a study directory" in result.stderr
