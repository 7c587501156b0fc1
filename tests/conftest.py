"""Shared test setup: keep the machine clean and torch small."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _clean_environment(tmp_path_factory):
    """Point HOME/TMPDIR at a temporary folder and switch off telemetry (MLflow and Ray send
    usage data by default)."""
    home = tmp_path_factory.mktemp("home")
    saved = {
        k: os.environ.get(k)
        for k in ("HOME", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "RAY_USAGE_STATS_ENABLED")
    }
    os.environ.update(
        {
            "HOME": str(home),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# Helpers shared by the tests (tests/cli_helpers.py) import as top-level modules. tests/ has
# folders named as the packages (tests/search_spaces, ...): import the packages first, or a test
# that is the first to import one would get the test folder as a namespace package.
import analysis, search_spaces, study, trainables  # noqa: E401, E402, F401, I001

sys.path.insert(0, str(Path(__file__).parent))


# The files that take longest (seconds on 2 busy cores, `--durations=0` of 2026-12-07), run first:
# with `--dist loadfile --no-loadscope-reorder` (make test) pytest-xdist hands out files in this
# order, so the two workers end together instead of one finishing a long study alone. A missing or
# stale entry changes only the order; a file's tests keep theirs (test_cli.py relies on it).
LONGEST_FILES = {
    "study/test_cli.py": 271,
    "study/test_image_eval_e2e.py": 255,
    "study/test_resume.py": 219,
    "study/test_images_e2e.py": 188,
    "study/test_two_nodes.py": 176,
    "study/test_train_worker_restart.py": 104,
    "study/test_server.py": 89,
    "study/test_readme.py": 89,
    "study/test_object_store.py": 87,
    "trainables/test_energy_head.py": 73,
    "study/test_failures.py": 72,
    "study/test_tracking_store.py": 62,
    "study/test_twin_e2e.py": 48,
    "study/test_interrupt.py": 41,
    "trainables/test_direction.py": 33,
    "trainables/test_fit.py": 29,
    "trainables/test_storage.py": 20,
    "trainables/test_images.py": 14,
    "trainables/test_sharded_eval.py": 14,
}


def pytest_collection_modifyitems(config, items):
    """Longest files first (LONGEST_FILES), the rest in collection order."""
    tests = Path(__file__).parent

    def cost(item) -> float:
        if not item.path.is_relative_to(tests):
            return 0
        return -LONGEST_FILES.get(item.path.relative_to(tests).as_posix(), 0)

    items.sort(key=cost)  # stable: a file's tests stay together and in order
