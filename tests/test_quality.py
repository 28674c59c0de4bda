"""Quality scores: the Inception Score on cases computed by hand, FID against scipy's matrix square root,
and the Inception-v3 backbone, which is read from the torch cache and never downloaded."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli, runs_of
from imaging.errors import InputError
from models.quality import embed, frechet_distance, inception_backbone, inception_score, inception_weights_path
from pipelines.synthesize import synthesize

CPU = torch.device("cpu")
WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"  # the file name of torchvision's IMAGENET1K_V1 url


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_a_classifier_that_says_nothing_scores_one(classes):
    score, spread = inception_score(np.full((40, classes), 1 / classes))
    assert score == pytest.approx(1, abs=1e-6) and spread == pytest.approx(0, abs=1e-9)
    assert inception_score(np.zeros((40, classes)))[0] == pytest.approx(1, abs=1e-6)  # equal logits: the same classifier


@pytest.mark.parametrize("classes", [3, 10])
def test_a_confident_classifier_over_balanced_classes_scores_the_class_count(classes):
    # sorted by class, as synthesize writes its images: every split must still see every class
    one_hot = np.eye(classes).repeat(10, axis=0)
    score, spread = inception_score(one_hot, splits=10)
    assert score == pytest.approx(classes, abs=1e-9) and spread == pytest.approx(0, abs=1e-9)


def test_inception_score_on_a_case_computed_by_hand():
    # p(y) = (3/4, 1/4); KL of [1, 0] is log(4/3), of [1/2, 1/2] is log(4/3)/2; IS = exp(3/4 log(4/3))
    score, spread = inception_score(np.array([[1.0, 0.0], [0.5, 0.5]]), splits=1)
    assert score == pytest.approx((4 / 3) ** 0.75, abs=1e-12) and spread == 0
    assert inception_score(np.log([[1.0, 1e-300], [0.5, 0.5]]), splits=1)[0] == pytest.approx((4 / 3) ** 0.75, abs=1e-9)  # as logits
    # split 0 holds rows 0 and 2 (two confident, different classes: IS 2), split 1 rows 1 and 3 (unsure: IS 1)
    score, spread = inception_score(np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.5, 0.5]]), splits=2)
    assert (score, spread) == (pytest.approx(1.5, abs=1e-12), pytest.approx(0.5, abs=1e-12))


@pytest.mark.parametrize("shape", [(300, 200, 16), (30, 40, 64)])  # more images than dimensions, and fewer
def test_frechet_distance_matches_the_matrix_square_root(shape):
    from scipy import linalg

    rng = np.random.default_rng(0)
    count_a, count_b, dims = shape
    a = rng.normal(size=(count_a, dims))
    b = rng.normal(0.5, 1, size=(count_b, dims)) @ rng.normal(size=(dims, dims)) * 0.3
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


@pytest.fixture(scope="module")
def cached_inception(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds an untrained Inception-v3 under the real weights' file name; (home, state dict)."""
    from torchvision.models import inception_v3

    home = tmp_path_factory.mktemp("torch-home")
    state = inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, home / "hub" / "checkpoints" / WEIGHTS_FILE)
    return home, state


def test_the_inception_backbone_loads_the_cached_weights_and_scores_colour_and_grey_images(cached_inception, monkeypatch):
    home, state = cached_inception
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert inception_weights_path() == home / "hub" / "checkpoints" / WEIGHTS_FILE
    backbone = inception_backbone(CPU)
    assert torch.equal(backbone.network.fc.weight, state["fc.weight"])  # these weights, not a fresh network
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    synthetic = torch.from_numpy(rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    real_features, _ = embed(backbone, real, CPU)
    synthetic_features, probabilities = embed(backbone, synthetic, CPU)
    assert real_features.shape == (4, 2048) and probabilities.shape == (4, 1000)
    score, spread = inception_score(probabilities)
    assert 1 <= score <= 1000 and math.isfinite(spread)
    assert math.isfinite(frechet_distance(real_features, synthetic_features))
    grey_features, _ = embed(backbone, torch.from_numpy(rng.integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)), CPU)
    assert grey_features.shape == (2, 2048) and np.isfinite(grey_features).all()


def test_a_synthesis_scored_with_inception_logs_its_is_and_fid(cached_inception, tiny_folder, experiment, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(cached_inception[0]))
    result = synthesize({"data": str(tiny_folder), "generator": "vae", "epochs": 1, "per_class": 2, "quality_epochs": 1, "quality_backbone": "inception"})
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["quality_backbone"] == "inception"
    assert 1 <= run.data.metrics["synth/is"] <= 1000 and run.data.metrics["synth/is_std"] >= 0
    assert math.isfinite(run.data.metrics["synth/fid"]) and 0 <= run.data.metrics["synth/cas"] <= 1


def test_inception_without_cached_weights_is_one_line_naming_the_file_before_any_run(tiny_folder, experiment, tmp_path, monkeypatch):
    empty = tmp_path / "empty-torch-home"
    result = run_cli("synthesize", "--data", str(tiny_folder), "--generator", "vae", "--epochs", "1", "--quality-backbone", "inception",
                     env={"TORCH_HOME": str(empty)})
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert WEIGHTS_FILE in errors[0] and str(empty / "hub" / "checkpoints") in errors[0] and "download https://" in errors[0]
    monkeypatch.setenv("TORCH_HOME", str(empty))
    with pytest.raises(InputError, match=WEIGHTS_FILE):
        synthesize({"data": str(tiny_folder), "generator": "vae", "quality_backbone": "inception"})
    with pytest.raises(InputError, match="--quality-backbone 'resnet' is not known"):
        synthesize({"data": str(tiny_folder), "generator": "vae", "quality_backbone": "resnet"})
    assert runs_of(experiment) == []
    assert not os.path.exists(empty / "hub" / "checkpoints" / WEIGHTS_FILE)  # nothing was downloaded
