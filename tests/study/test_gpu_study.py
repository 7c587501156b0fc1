"""A tiny-images study on the GPU through the CLI: every trial's Train worker holds a GPU
(ScalingConfig use_gpu), trains in bf16 with channels-last, and logs its MFU against the GPU's
listed peak. Marked gpu (`make test-gpu`); CI has no GPU."""

import pytest
import torch
import yaml
from cli_helpers import TINY_IMAGES_FAST, run_cli, table_methods

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_a_tiny_images_study_trains_and_evaluates_on_the_gpu(tmp_path):
    from mlflow.tracking import MlflowClient

    from analysis.runs import load_runs
    from trainables.flops import peak_tflops

    spec = {
        "name": "gpu",
        "base_config": "tiny-images",
        "dataset": "tiny-images",
        "methods": ["CG-SC-all", "Cond"],
        "label_percents": [50],
        "num_trials": 2,
        "objectives": [{"metric": "guided_dsm", "mode": "min"}],
        "resources": {
            "cpus_per_trial": 1,
            "gpus_per_trial": 1,
            "num_workers": 1,
            "max_concurrent_trials": 1,
        },
        "storage": str(tmp_path / "studies"),
        "config": {**TINY_IMAGES_FAST, "train.precision": "bf16", "train.channels_last": True},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli("run", "spec.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert {"CG-SC-all", "Cond"} <= set(table_methods(result.stdout))
    uri = f"sqlite:///{tmp_path / 'studies' / 'gpu' / 'mlflow.db'}"
    runs = load_runs(uri, "gpu")
    search = runs[runs["stage"] == "search"]
    assert len(search) == 2 and (runs["status"] == "FINISHED").all()
    assert search["guided_dsm"].notna().all() and search["fid"].notna().all()
    client = MlflowClient(uri)
    # Every network a trial trained logged its TFLOP/s; an MFU, too, where the GPU's peak is listed.
    listed = peak_tflops(torch.device("cuda"), "bf16", 0.0) is not None
    trained = {"classifier", "conditional", "score", "eval_classifier"}
    for run_id in runs["run_id"]:
        metrics = client.get_run(run_id).data.metrics
        mine = {k.split("/")[0] for k in metrics if k.endswith("/tflops")} & trained
        for network in mine:
            assert metrics[f"{network}/tflops"] > 0
            if listed:
                assert 0 < metrics[f"{network}/mfu"] < 1, (network, metrics)
    logged = {
        k.split("/")[0] for r in runs["run_id"] for k in client.get_run(r).data.metrics
    }  # the search trials train the classifier and the conditional model at least
    assert {"classifier", "conditional"} <= {n for n in logged if n in trained}
