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
