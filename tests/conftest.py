"""Test setup: every test runs offline against its own MLflow experiment in a
session-wide temporary tracking store, with a temporary synthmix cache."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_SESSION = Path(tempfile.mkdtemp(prefix="synthmix-tests-"))
os.environ.update(
    {
        "SYNTHMIX_CACHE": str(_SESSION / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{_SESSION / 'mlflow.db'}",
        "SYNTHMIX_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TORCH_HOME": str(_SESSION / "torch"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "TQDM_DISABLE": "1",
    }
)
os.chdir(_SESSION)  # MLflow writes run artifacts under ./mlruns
# property tests draw the same examples on every run, so a green suite stays green
settings.register_profile("synthmix", derandomize=True)
settings.load_profile("synthmix")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped, with the reason, where torch sees no GPU."""
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU, and torch sees none here; bash benchmarks/device_check.sh runs these on a GPU machine")
    for item in cuda_tests:
        item.add_marker(skip)


@pytest.fixture
def experiment(monkeypatch):
    """A fresh MLflow experiment for this test, also seen by subprocesses."""
    import mlflow

    name = f"test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    experiment_id = mlflow.set_experiment(name).experiment_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)  # set_experiment sets it too; undone after the test
    yield experiment_id
    if mlflow.active_run():
        mlflow.end_run()


def runs_of(experiment_id: str, stage: str | None = None) -> list:
    import mlflow

    runs = mlflow.search_runs([experiment_id], output_format="list")
    return [r for r in runs if stage is None or r.data.tags.get("synthmix.stage") == stage]


def write_image(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def pattern(label: int, index: int, size: int = 16) -> np.ndarray:
    """A grey image whose class is easy to learn: a bright bar at a class-specific row, plus noise."""
    rng = np.random.default_rng(label * 1000 + index)
    image = rng.integers(0, 60, (size, size), dtype=np.uint8)
    row = (label * size) // 4 + 1
    image[row:row + 3, 2:size - 2] = 220
    return image


def make_folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 12, size: int = 16, splits: dict | None = None) -> Path:
    """Class folders of PNGs; `splits={"train": 8, "test": 4}` puts them under split folders instead."""
    for label, name in enumerate(classes):
        if splits:
            index = 0
            for split, count in splits.items():
                for _ in range(count):
                    write_image(root / split / name / f"{index:03d}.png", pattern(label, index, size))
                    index += 1
        else:
            for index in range(per_class):
                write_image(root / name / f"{index:03d}.png", pattern(label, index, size))
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "tiny", per_class=20)


def run_cli(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pipelines ...` as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**{k: v for k, v in os.environ.items() if not (env and "MLFLOW_EXPERIMENT_NAME" in env and k == "MLFLOW_EXPERIMENT_ID")}, **(env or {})},
    )


PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


def _pg_admin():
    """A connection to the PostgreSQL server, or a skip (a failure under CI=true, where one must be running)."""
    import psycopg

    try:
        return psycopg.connect(f"{PG_SERVER}/test", connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as error:
        message = f"no PostgreSQL server on 127.0.0.1:5432 ({error})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must have one")
        pytest.skip(f"{message}; CI has one")


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database for this test, dropped afterwards; its URL."""
    databases = _pg_databases()
    yield databases()
    databases.drop()


@pytest.fixture
def pg_databases():
    """A maker of fresh PostgreSQL databases for this test (each dropped afterwards)."""
    databases = _pg_databases()
    yield databases
    databases.drop()


class _pg_databases:
    def __init__(self):
        self.admin, self.names = _pg_admin(), []

    def __call__(self) -> str:
        name = f"synthmix_{uuid.uuid4().hex[:10]}"
        with self.admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        self.names.append(name)
        return f"{PG_SERVER}/{name}"

    def drop(self):
        with self.admin.cursor() as cursor:
            for name in self.names:
                cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.admin.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)


def venv_env(extra: dict | None = None) -> dict:
    """The environment with this Python's bin folder first on PATH (servers exec gunicorn / uvicorn from it)."""
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]), **(extra or {})}


def study_workers(tmp_path: Path, pg_databases, experiment: str, *options: str, workers: int = 2) -> tuple[str, list[str]]:
    """`python -m pipelines main` on a tiny real and synthetic folder, started `workers` times at once on a fresh
    PostgreSQL tracking store and Optuna storage, with `options` added; (the tracking store URL, each worker's output)."""
    real, synthetic = make_folder(tmp_path / "real", per_class=16), make_folder(tmp_path / "synthetic", per_class=16)
    backend, storage = pg_databases(), pg_databases()
    env = {k: v for k, v in venv_env({"MLFLOW_TRACKING_URI": backend, "MLFLOW_EXPERIMENT_NAME": experiment}).items() if k != "MLFLOW_EXPERIMENT_ID"}
    args = [sys.executable, "-m", "pipelines", "main", "--data", str(real), "--synthetic-data", str(synthetic), "--ratios", "0,0.5",
            "--augments", "none", "--saliency", "0", "--model", "smallcnn", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
            "--registered-model", "none", "--storage", storage, *options]
    started = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path) for _ in range(workers)]
    outputs = [worker.communicate(timeout=600)[0] for worker in started]
    assert all(worker.returncode == 0 for worker in started), "".join(out[-2000:] for out in outputs)
    return backend, outputs

