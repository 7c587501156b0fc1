"""A short study on the image twin through `study run`: every trial logs the exact metrics per
noise band beside the FID family, and the table shows them."""

import math

import pytest
import yaml
from cli_helpers import TINY_IMAGES_FAST, run_cli

pytestmark = pytest.mark.slow


def test_twin_study_logs_the_exact_metrics_per_band(tmp_path):
    from analysis.runs import load_runs

    spec = {
        "name": "twin",
        "base_config": "twin",
        "dataset": "twin",
        "methods": ["CG-SC-all", "Cond"],
        "label_percents": [20],
        "trials_per_cell": 1,
        "objectives": [{"metric": "guided_score_cos", "mode": "max"}],
        "guidance": {"scales": [1, 2], "val_num_per_class": 4},
        "storage": str(tmp_path / "studies"),
        "resources": {"max_concurrent_trials": 2},
        "config": {
            **TINY_IMAGES_FAST,
            "data.num_classes": 4,
            "data.twin_source_images": 400,
            "data.twin_rank": 4,
            "eval.cache_dir": str(tmp_path / "shared-cache"),
        },
    }
    (tmp_path / "twin.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli("run", "twin.yaml", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = load_runs(f"sqlite:///{tmp_path / 'studies' / 'twin' / 'mlflow.db'}", "twin")
    runs = runs[runs["stage"] == "search"].set_index("method")
    assert set(runs.index) == {"CG-SC-all", "Cond"}
    bands = 4  # eval.sc_bands clipped to the tiny-images noise range: 4 bands
    for method, row in runs.iterrows():
        for band in range(bands):
            assert math.isfinite(row[f"guided_score_cos_band{band}"]), (method, band)
        assert -1 <= row["guided_score_cos"] <= 1
        assert 0 <= row["bayes_gen_accuracy"] <= 1 and math.isfinite(row["sample_var_ratio"])
        assert math.isfinite(row["fid"]) and math.isfinite(row["intra_fid"])  # the proxies beside
        # the ceiling: the twin's Bayes accuracy, 1 - 0.15 (1 - 1/4) by construction
        assert row["gen_accuracy_exact"] == pytest.approx(0.8875, abs=0.08)
    clf = runs.loc["CG-SC-all"]
    assert all(math.isfinite(clf[f"score_cos_band{b}"]) for b in range(bands))
    assert any(math.isfinite(clf[f"grad_cos_band{b}"]) for b in range(bands))
    assert "grad_cos_band0" not in runs.columns or math.isnan(runs.loc["Cond", "grad_cos_band0"])
    table = (tmp_path / "studies" / "twin" / "tables" / "comparison.md").read_text()
    assert "bayes_gen_accuracy" in table and "guided_score_cos" in table
    figures = tmp_path / "studies" / "twin" / "figures"
    assert {"samples_CG-SC-all@20%.png", "samples_Cond@20%.png"} <= {
        p.name for p in figures.glob("samples_*.png")
    }  # each cell's labelled sample grid
    # the twin's fit is stored once, by content, beside the evaluation's other yardsticks
    assert len(list((tmp_path / "shared-cache" / "twins").glob("*.pt"))) == 1
