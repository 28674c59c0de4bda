"""CycleGAN domain translation: the translator itself, the synthesize stage through
the front door (a translated copy of each real train image, with its lineage),
its input errors, the study's three arms and `mlflow run`."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import REPO, run_cli, runs_of
from imaging.errors import InputError
from models.generators import cyclegan, load_generator
from pipelines.synthesize import synthesize

CLASSES = ("cat", "coffee", "flower")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two threads on a shared 2-core machine are many times slower than one


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """A 32 px colour photo folder (3 classes x 8) and a target folder of other, snowy patches
    (flat and in a sub-folder, JPEG, non-square)."""
    from imaging.corruptions import corrupt
    from imaging.photos import patches, write_photo_folder

    root = tmp_path_factory.mktemp("domains")
    photos = write_photo_folder(root / "photos", classes=CLASSES, size=32, per_class=8)
    others = np.concatenate([patches(name, 4, 40, seed=100 + i) for i, name in enumerate(CLASSES)])
    snowy = corrupt(others, "snow", 1, seed=0)
    (root / "snowy" / "more").mkdir(parents=True)
    for index, array in enumerate(snowy):
        Image.fromarray(array[:, :36]).save(root / "snowy" / ("more" if index % 2 else ".") / f"{index}.jpg")  # 36 x 40: centre-cropped
    return photos, root / "snowy"


def tiny_hyper(size: int, **changes) -> dict:
    return {**cyclegan.defaults_for(size, size), "base_channels": 4, "epochs": 1, "batch_size": 4, **changes}


@pytest.mark.parametrize("size", [32, 128])
def test_the_translator_keeps_shape_and_colour_and_is_fixed_by_its_seed(size, tmp_path):
    generator = torch.Generator().manual_seed(size)
    source = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=generator)
    target = torch.randint(0, 120, (6, 3, size, size), dtype=torch.uint8, generator=generator)
    first = cyclegan.train(source, target, hyper=tiny_hyper(size), seed=3, device="cpu", progress=False)
    assert sum(isinstance(m, cyclegan.ResidualBlock) for m in first.source_to_target.modules()) == 6  # the paper's blocks at <= 128 px
    out = first.translate(source, batch_size=3)
    assert out.dtype == torch.uint8 and out.device.type == "cpu" and out.shape == source.shape
    assert not torch.equal(out[:, 0], out[:, 1])  # colour, not grey copied into three channels
    again = cyclegan.train(source, target, hyper=tiny_hyper(size), seed=3, device="cpu", progress=False).translate(source)
    other = cyclegan.train(source, target, hyper=tiny_hyper(size), seed=4, device="cpu", progress=False).translate(source)
    assert torch.equal(out, again) and not torch.equal(out, other)
    loaded = load_generator(first.save(tmp_path / "generator.pt"))
    assert loaded.kind == "cyclegan" and torch.equal(loaded.translate(source), out)


def test_the_defaults_are_zhu_et_al_except_the_cycle_and_identity_weights_and_the_learning_rate_decays_linearly_to_zero():
    for size, blocks in ((32, 6), (64, 6), (128, 6), (256, 9), (512, 9)):
        hyper = cyclegan.defaults_for(size, size)
        assert hyper["blocks"] == blocks
        assert (hyper["pool_size"], hyper["lr"], hyper["beta1"]) == (50, 2e-4, 0.5)
        assert hyper["cycle_weight"] == 13.0  # not the paper's 10: at 10 snow seed 1 lost the class (README, CycleGAN)
        assert hyper["identity_weight"] == 3.0  # not the paper's 5: with the residual generator it held the snow shift back (README, CycleGAN)
        assert (hyper["semantic_weight"], hyper["semantic_epochs"]) == (0.0, 8)  # the paper's: no semantic loss
    assert cyclegan.defaults_for(64, 64)["base_channels"] == 16  # the narrow CPU preset, not fewer blocks
    factors = [cyclegan.lr_factor(step, 100) for step in range(100)]
    assert factors[:50] == [1.0] * 50 and factors[-1] == 0.0
    assert np.allclose(np.diff(factors[50:]), np.diff(factors[50:])[0])  # a straight line from 1 to 0
    from pipelines.synthesize import DEFAULTS

    assert (DEFAULTS["cycle_weight"], DEFAULTS["identity_weight"], DEFAULTS["pool_size"], DEFAULTS["blocks"]) == (13.0, 3.0, 50, 0)
    assert (DEFAULTS["semantic_weight"], DEFAULTS["semantic_epochs"]) == (0.0, 8)  # the stage's defaults are the translator's
    rates = []
    source = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    cyclegan.train(source, source, hyper=tiny_hyper(16, epochs=4, batch_size=2), seed=0, device="cpu", progress=False,
                   on_epoch=lambda epoch, metrics: rates.append(metrics["gen/lr"]))
    # per-epoch means of the per-step rate: constant over the first half, then falling; the last epoch averages 3/7 .. 0 of it
    assert rates[:2] == pytest.approx([2e-4, 2e-4], rel=0.3) and rates[1] > rates[2] > rates[3] and rates[3] == pytest.approx(2e-4 * 6 / 28)


def test_diff_augment_in_the_discriminators_is_off_by_default_and_seeded():
    generator = torch.Generator().manual_seed(0)
    source = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=generator)
    target = torch.randint(0, 120, (8, 3, 16, 16), dtype=torch.uint8, generator=generator)
    assert cyclegan.defaults_for(64, 64)["augment"] == ""  # the paper's: no augmentation

    def translations(**changes):
        return cyclegan.train(source, target, hyper=tiny_hyper(16, epochs=2, batch_size=2, **changes), seed=1, device="cpu", progress=False).translate(source)

    plain, augmented = translations(), translations(augment="translation,cutout")
    assert not torch.equal(plain, augmented) and torch.equal(augmented, translations(augment="translation,cutout"))
    with pytest.raises(ValueError, match="unknown augmentation blur"):
        translations(augment="blur")


def test_the_semantic_loss_needs_labels_and_keeps_the_source_classifier_s_label_on_the_translations():
    from models.generators.base import to_unit_range

    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 8)  # two classes told apart by brightness; the target domain is noise
    source = torch.where(labels.view(-1, 1, 1, 1) == 1, 150, 90).to(torch.uint8).expand(-1, 3, 16, 16)
    source = (source.int() + torch.randint(-20, 21, source.shape, generator=generator)).clamp(0, 255).to(torch.uint8)
    target = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=generator)
    hyper = tiny_hyper(16, epochs=4, batch_size=4, identity_weight=0.0, lr=2e-3)
    with pytest.raises(ValueError, match="semantic_weight 10 needs one label per source image"):
        cyclegan.train(source, target, hyper={**hyper, "semantic_weight": 10.0}, seed=0, device="cpu", progress=False)
    curves = []
    kept = cyclegan.train(source, target, hyper={**hyper, "semantic_weight": 10.0}, seed=0, device="cpu", progress=False, labels=labels,
                          on_epoch=lambda epoch, metrics: curves.append(metrics))
    plain = cyclegan.train(source, target, hyper=hyper, seed=0, device="cpu", progress=False, labels=labels)
    assert len(curves) == 4 and all(c["gen/loss_semantic"] > 0 for c in curves)
    classify = cyclegan.source_classifier(source, labels, epochs=8, seed=0 + 3, device="cpu")  # the one train() builds for seed 0

    def loss(model):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(classify(to_unit_range(model.translate(source))), labels))

    assert loss(kept) < 0.8 * loss(plain)  # measured: 0.13 against 0.21


def test_the_stage_writes_a_translated_copy_of_each_real_train_image_with_its_source(domains, experiment):
    from imaging.datasets import scan_folder

    photos, snowy = domains
    result = run_cli("synthesize", "--data", str(photos), "--generator", "cyclegan", "--target-data", str(snowy), "--epochs", "1",
                     "--per-class", "5", "--quality-epochs", "1", "--seed", "2", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = runs_of(experiment, "synthesize")
    frame = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="dataset/manifest.csv"), keep_default_na=False)
    real = scan_folder(photos)[0].frame
    train = real[real["split"] == "train"].set_index("path")["label"]
    expected = {label: min(5, int((train == label).sum())) for label in CLASSES}
    assert frame.groupby("label").size().to_dict() == expected  # --per-class caps the translated images of each class
    assert frame["source_image"].is_unique and set(frame["source_image"]) <= set(train.index)
    assert (frame["label"] == train[frame["source_image"]].to_numpy()).all()  # each keeps its source's label
    from models.generators import image_seed

    assert frame["seed"].astype(int).tolist() == [image_seed(2, i) for i in range(len(frame))]
    for path in frame["path"][:3]:
        image = Image.open(io.BytesIO(open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path), "rb").read()))
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    metrics = run.data.metrics
    assert {"gen/loss_cycle", "gen/loss_identity", "gen/lr", "perf/train_seconds", "perf/imgs_per_s", "synth/cas", "synth/fid", "synth/is", "synth/detectability"} <= set(metrics)
    assert run.data.tags["synthmix.generator"] == "cyclegan" and run.data.tags["synthmix.target_digest"]
    artifacts = {a.path for folder in ("generator", "samples") for a in MlflowClient().list_artifacts(run.info.run_id, folder)}
    assert {"generator/generator.pt", "generator/config.json", "samples/before_after.png"} <= artifacts
    config = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/generator/config.json")
    assert (config["blocks"], config["base_channels"], config["image_height"], config["residual"], config["residual_form"], config["identity_weight"], config["semantic_weight"]) == (6, 16, 32, True, "linear", 3.0, 0.0)  # the defaults

    # its translator translates again without training; another target folder is another run
    params = {"data": str(photos), "generator": "cyclegan", "per_class": 5, "seed": 2, "quality": False}
    again = synthesize({**params, "generator_run": run.info.run_id})
    assert again.manifest.frame["sha256"].tolist() == frame["sha256"].tolist()  # the residual translator, rebuilt from its checkpoint
    assert not any(key.startswith("gen/") for key in MlflowClient().get_run(again.run_id).data.metrics)
    first = synthesize({**params, "target_data": str(snowy), "epochs": 1}, reuse=True)
    assert synthesize({**params, "target_data": str(snowy), "epochs": 1}, reuse=True).run_id == first.run_id
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(snowy / "more" / "extra.png")
    try:
        assert synthesize({**params, "target_data": str(snowy), "epochs": 1}, reuse=True).run_id != first.run_id
    finally:
        (snowy / "more" / "extra.png").unlink()


def test_bad_target_input_is_refused_before_any_run(domains, experiment, tmp_path):
    photos, snowy = domains
    base = {"data": str(photos), "generator": "cyclegan"}
    result = run_cli("synthesize", "--data", str(photos), "--generator", "cyclegan", "--target-data", str(tmp_path / "missing"), env=ONE_THREAD)
    assert result.returncode == 2 and "--target-data" in result.stderr and "is not a folder" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="--target-data: .*empty holds no images"):
        synthesize({**base, "target_data": str(tmp_path / "empty")})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="--target-data: .*a.png"):
        synthesize({**base, "target_data": str(tmp_path / "broken")})
    with pytest.raises(InputError, match="--target-data applies to cyclegan, not dcgan"):
        synthesize({**base, "generator": "dcgan", "target_data": str(snowy)})
    with pytest.raises(InputError, match="--generator cyclegan needs --target-data"):
        synthesize(base)
    with pytest.raises(InputError, match="--latent-dim applies to dcgan, vae, not cyclegan"):
        synthesize({**base, "target_data": str(snowy), "latent_dim": 8})
    with pytest.raises(InputError, match="--cycle-weight applies to cyclegan, not vae"):
        synthesize({"data": str(photos), "generator": "vae", "cycle_weight": 3.0})
    assert runs_of(experiment) == []


def test_a_study_of_a_cyclegan_run_compares_source_translated_and_both(domains, experiment):
    from pipelines.main import main

    photos, snowy = domains
    synthesis = synthesize({"data": str(photos), "generator": "cyclegan", "target_data": str(snowy), "epochs": 1, "base_channels": 4, "quality": False})
    with pytest.raises(InputError, match="--ratios does not apply to a cyclegan study"):
        main({"data": str(photos), "synthetic_run": synthesis.run_id, "ratios": "0,0.5"})
    with pytest.raises(InputError, match="--generator cyclegan needs --target-data"):
        main({"data": str(photos), "generator": "cyclegan"})
    with pytest.raises(InputError, match="--target-data is for synthesizing"):
        main({"data": str(photos), "synthetic_run": synthesis.run_id, "target_data": str(snowy)})
    facts = main({"data": str(photos), "synthetic_run": synthesis.run_id, "model": "smallcnn", "epochs": 1, "batch_size": 16, "seeds": "1",
                  "corruptions": "", "saliency": 0, "registered_model": "none", "device": "cpu"})
    results = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=facts["run_id"], artifact_path="results.csv"))
    assert dict(zip(results["arm"], results["ratio"])) == {"source": 0.0, "both": 0.5, "translated": 1.0} and (results["status"] == "ok").all()
    summary = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=facts["run_id"], artifact_path="summary.csv"))
    assert summary["arm"].tolist() == ["source", "both", "translated"]
    mixes = {r.data.tags["synthmix.arm"]: r for r in runs_of(experiment, "mix")}
    real_train = len(synthesis.manifest.frame)  # a translation of every real train image
    assert mixes["translated"].data.metrics["mix/real_total"] == 0 and mixes["translated"].data.metrics["mix/synthetic_total"] == real_train
    assert mixes["both"].data.metrics["mix/real_total"] == real_train and mixes["both"].data.metrics["mix/synthetic_total"] == real_train
    assert mixes["both"].data.params["mode"] == "add"
    assert {r.data.tags["synthmix.arm"] for r in runs_of(experiment, "train")} == {"source", "both", "translated"}
    assert "report.html" in {a.path for a in MlflowClient().list_artifacts(facts["run_id"])}


@pytest.mark.slow
def test_mlflow_run_synthesize_with_cyclegan(domains, experiment):
    photos, snowy = domains
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env.update(ONE_THREAD)
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "synthesize", "--env-manager", "local", "-P", f"data={photos}",
                           "-P", "generator=cyclegan", "-P", f"target_data={snowy}", "-P", "epochs=1", "-P", "per_class=2", "-P", "quality=false",
                           "-P", "semantic_weight=0.5", "-P", "semantic_epochs=2", "-P", "diff_augment=translation"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = runs_of(experiment, "synthesize")
    assert run.info.status == "FINISHED" and run.data.params["target_data"] == str(snowy)
    assert run.data.metrics["synth/images"] == 6 and "perf/train_seconds" in run.data.metrics
    # the translator's options reach it through MLproject: the semantic loss (the real train labels) and DiffAugment
    config = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/generator/config.json")
    assert (config["semantic_weight"], config["semantic_epochs"], config["augment"]) == (0.5, 2, "translation")
    assert run.data.metrics["gen/loss_semantic"] > 0


def test_a_residual_translator_starts_as_the_identity_and_the_paper_s_does_not():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    changes = {}
    for residual, form, upsample in ((True, "linear", "transposed"), (True, "tanh", "transposed"), (False, "linear", "transposed"), (True, "linear", "resize"), (False, "linear", "resize")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cyclegan.build({**tiny_hyper(32), "residual": residual, "residual_form": form, "upsample": upsample, "image_channels": 3, "image_height": 32, "image_width": 32})
            cyclegan.init_weights(model)  # as train does: N(0, 0.02); the residual one's last conv at 0
        translated = model.translate(images)
        assert translated.shape == images.shape and translated.dtype == torch.uint8
        changes[residual, form, upsample] = (translated.float() - images.float()).abs().mean().item()
    # grey levels: the residual ones keep the image (tanh's atanh clamp at 0.999 moves 0 and 255 by a fraction), the plain one draws a new one;
    # with either up-sampling layer
    assert changes[True, "linear", "transposed"] == changes[True, "linear", "resize"] == 0
    assert changes[True, "tanh", "transposed"] < 1 < 40 < min(changes[False, "linear", "transposed"], changes[False, "linear", "resize"])


def test_the_linear_residual_moves_bright_pixels_as_far_as_dark_ones_and_old_checkpoints_keep_the_tanh_form():
    """A change of +0.2 (about 25 grey levels, a brightening like the winter benchmark's) applied by each form to dark,
    mid and bright pixels: the linear form moves each by 0.2 until the top of the range, where it clips; the tanh form
    moves a pixel at 0.9 by a sixth of that (tanh's slope there is 0.19), which is why it learnt brightening slowly."""
    pixels = torch.tensor([-0.5, 0.0, 0.5, 0.9, 0.95]).view(1, 1, 1, 5)
    body = nn.Sequential(nn.Conv2d(1, 1, 1))
    nn.init.zeros_(body[0].weight)
    nn.init.constant_(body[0].bias, 0.2)
    with torch.no_grad():
        linear = cyclegan.ResidualOutput(body, "linear")(pixels).flatten()
        tanh = cyclegan.ResidualOutput(body, "tanh")(pixels).flatten()
    assert linear.tolist() == pytest.approx([-0.3, 0.2, 0.7, 1.0, 1.0])
    moved = tanh - pixels.flatten()
    assert moved[0] > 0.15 and moved[3] < 0.04 and moved[4] < 0.02
    with pytest.raises(ValueError, match="unknown residual form 'clip'; choose linear or tanh"):
        cyclegan.ResidualOutput(body, "clip")
    # checkpoints saved before the options: without `residual` the paper's generator, without `residual_form` the tanh form
    old = {key: value for key, value in tiny_hyper(32).items() if key not in ("residual", "residual_form")} | {"image_channels": 3, "image_height": 32, "image_width": 32}
    assert isinstance(cyclegan.build(old).source_to_target[-1], nn.Tanh)
    assert cyclegan.build({**old, "residual": True}).source_to_target.form == "tanh"
    assert (cyclegan.defaults_for(64, 64)["residual"], cyclegan.defaults_for(64, 64)["residual_form"]) == (True, "linear")
