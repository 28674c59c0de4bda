"""A team's setup: the MLflow backend store in PostgreSQL (127.0.0.1:5432, trust auth)."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from conftest import make_folder, run_cli


@pytest.mark.postgres
def test_train_logs_to_a_postgresql_backend_store(pg_database, tmp_path):
    folder = make_folder(tmp_path / "pg", per_class=10)
    result = run_cli("train", "--data", str(folder), "--model", "smallcnn", "--epochs", "1", env={"MLFLOW_TRACKING_URI": pg_database, "MLFLOW_EXPERIMENT_NAME": "pg"})
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(tracking_uri=pg_database)
    [run] = client.search_runs([client.get_experiment_by_name("pg").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["synthmix.stage"] == "train"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0]
