"""Faults a user meets before any work starts, tried through the real command (`python -m pipelines ...`):
each is answered with exit code 2 and one line on stderr, `error: ...`, naming the problem, no traceback,
and no MLflow run left behind. Plus: commands that create a new SQLite store together both succeed, and
two small units (the headline of a study whose cell lost seeds, and `mlflow run`'s '' parameters)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import free_port, make_folder, run_cli, wait_for_http

TRAIN = ("train", "--model", "smallcnn", "--epochs", "1", "--device", "cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """3 classes x 20 16-px images (16 train, 2 val, 2 test per class)."""
    return make_folder(tmp_path_factory.mktemp("faults") / "tiny", per_class=20)


def run_count(uri: str | None = None) -> int:
    """Runs of every experiment, deleted ones included, in `uri` (default: the session's tracking store)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or os.environ["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return len(client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=50_000)) if experiments else 0


def refused(result: subprocess.CompletedProcess, *named: str) -> str:
    """The command stopped on bad input: exit 2, one stderr line `error: ...` holding every `named` text."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def test_a_web_server_that_is_not_mlflow_is_named_and_nothing_is_logged_to_it(tiny, tmp_path):
    port = free_port()
    (tmp_path / "www").mkdir()
    log_path = tmp_path / "http.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path / "www", stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/", server, log_path, seconds=30)
            result = run_cli(*TRAIN, "--data", str(tiny), env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
        finally:
            server.terminate()
            server.wait(timeout=30)
    refused(result, f"http://127.0.0.1:{port} answers, but not as an MLflow tracking server", "MLFLOW_TRACKING_URI")
    requests = log_path.read_text()
    assert "GET /api/2.0/mlflow/" in requests  # it asked, as MLflow's REST API, what the server is
    assert "POST" not in requests  # and created nothing there (no experiment, no run)


def test_a_sqlite_uri_naming_a_file_that_is_not_a_database_is_refused_and_the_file_left_alone(tiny, tmp_path):
    notes = tmp_path / "notes.db"
    notes.write_text("my notes, not a database\n")
    before = (notes.read_bytes(), notes.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    result = run_cli(*TRAIN, "--data", str(tiny), env={"MLFLOW_TRACKING_URI": f"sqlite:///{notes}"})
    refused(result, f"{notes} is not a SQLite database")
    assert (notes.read_bytes(), notes.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir())) == before  # not migrated, no lock file


def test_a_cache_path_that_is_a_file_is_refused(tiny, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("a file")
    before = run_count()
    result = run_cli(*TRAIN, "--data", str(tiny), env={"SYNTHMIX_CACHE": str(cache)})
    refused(result, f"SYNTHMIX_CACHE={cache} is a file, not a folder")
    assert cache.read_text() == "a file"
    assert run_count() == before


def test_an_optuna_storage_url_of_an_unknown_kind_is_refused(tiny):
    before = run_count()
    result = run_cli("sweep", "--data", str(tiny), "--storage", "foo://bar", "--device", "cpu")
    refused(result, "foo://bar is not a database URL", "no SQLAlchemy dialect for 'foo'")
    assert run_count() == before


def test_a_space_file_that_is_not_utf8_is_refused(tiny, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_bytes(b"\xff\xfe\x00bad")
    before = run_count()
    result = run_cli("sweep", "--data", str(tiny), "--space", str(space), "--device", "cpu")
    refused(result, f"--space {space} is not UTF-8 text")
    assert run_count() == before


def test_too_few_synthetic_images_per_class_is_refused_before_any_run(tiny):
    # 16 real train images per class: at ratio 0.5 (replace mode) 8 of them are synthetic
    before = run_count()
    result = run_cli("main", "--data", str(tiny), "--per-class", "4", "--ratios", "0,0.5", "--seeds", "1", "--device", "cpu")
    refused(result, "--per-class 4 is too few", "needs 8 synthetic images", "--per-class 8")
    assert run_count() == before


def test_a_corruption_level_out_of_range_is_refused_before_any_run(tiny):
    before = run_count()
    result = run_cli("corrupt", "--data", str(tiny), "--kind", "salt_pepper", "--level", "5")
    refused(result, "level 5.0 is outside 0.0..1.0 for salt_pepper")
    assert run_count() == before  # it used to leave a FAILED run behind


def test_commands_creating_a_new_sqlite_store_together_both_succeed(tmp_path):
    """The first command creates and migrates the store under a file lock; the other waits instead of racing it.
    (Without the lock two processes opening a new store at once fail nearly every time: "table
    _alembic_tmp_model_versions already exists", "duplicate column name: step".)"""
    from mlflow.tracking import MlflowClient

    data = make_folder(tmp_path / "small", classes=("ant", "bee"), per_class=10)
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}  # both also create the experiment
    # two rounds, each on a new store: two trainings (they log models), then two cheaper corrupt runs
    rounds = [[(*TRAIN, "--data", str(data), "--seed", str(seed)) for seed in (0, 1)],
              [("corrupt", "--data", str(data), "--kind", "salt_pepper", "--seed", str(seed)) for seed in (0, 1)]]
    for attempt, commands in enumerate(rounds):
        uri = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        started = [subprocess.Popen([sys.executable, "-m", "pipelines", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**base, "MLFLOW_TRACKING_URI": uri}) for command in commands]
        for process in started:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-3000:]
            assert "alembic" not in err.lower() and "Traceback" not in err and "already exists" not in err, err[-3000:]
        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"], commands[0][0]


def test_the_headline_of_a_cell_whose_seeds_failed_says_so_not_one_seed_per_cell():
    from tracking.statistics import headline_facts, headline_from_facts, summarise

    def result(ratio, seed, acc, status="ok"):
        return {"ratio": ratio, "augment": "none", "seed": seed, "status": status, "test/acc": acc}

    # --seeds 2: both real-only seeds finished, one of the two at 50% failed
    summary = summarise(pd.DataFrame([result(0.0, 0, 0.90), result(0.0, 1, 0.92), result(0.5, 0, 0.89), result(0.5, 1, 0.10, "failed")]), ["test/acc"])
    assert summary[summary["ratio"] == 0.5][["n", "failed"]].values.tolist() == [[1, 1]]
    facts = headline_facts(summary, 0.01)
    assert (facts["verdict"], facts["drop"]["n"], facts["drop"]["failed"]) == ("one_seed", 1, 1)
    sentence = headline_from_facts(facts)
    assert "With one seed per cell" not in sentence and "run at least 2 seeds" not in sentence
    assert sentence.startswith("At 50% synthetic only 1 seed finished (1 failed: see the failed steps), so there is no confidence interval")

    # both seeds at 50% failed: nothing to quote, and no "nan" or "n/a" drop
    summary = summarise(pd.DataFrame([result(0.0, 0, 0.90), result(0.0, 1, 0.92), result(0.5, 0, 0.89, "failed"), result(0.5, 1, 0.10, "failed")]), ["test/acc"])
    sentence = headline_from_facts(headline_facts(summary, 0.01))
    assert sentence.startswith("At 50% synthetic no seed finished (2 failed: see the failed steps)")
    assert "nan" not in sentence and "n/a" not in sentence and "With one seed per cell" not in sentence

    # a study run with one seed is still told to run more
    summary = summarise(pd.DataFrame([result(0.0, 0, 0.90), result(0.5, 0, 0.89)]), ["test/acc"])
    assert headline_from_facts(headline_facts(summary, 0.01)).startswith("With one seed per cell")


def test_parameters_mlflow_run_logged_as_two_quotes_are_read_as_empty():
    """`mlflow run -P space=` logs the empty value as the two characters '' (mlflow/mlflow#6811)."""
    from tracking.runs import run_params

    run = SimpleNamespace(data=SimpleNamespace(params={"space": "''", "storage": '""', "study": "", "model": "smallcnn", "data": "mnist5k",
                                                       "synthetic_run": "abc", "resolved.synthetic_run": "''"}))
    assert run_params(run) == {"space": "", "storage": "", "study": "", "model": "smallcnn", "data": "mnist5k", "synthetic_run": ""}
