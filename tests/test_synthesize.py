"""The synthesize stage, run for real: a tiny Stable Diffusion pipeline built
here (text-to-image, image-to-image, safety checker) and trained generators."""
from __future__ import annotations

import io

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import run_cli, runs_of
from imaging.errors import InputError
from pipelines.synthesize import synthesize
from tiny_sd import build_tiny_sd, install_fake_safety_checker

QUICK = {"per_class": 2, "steps": 2, "quality": False, "sd_batch_size": 3}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


def image_bytes(run_id: str, path: str) -> bytes:
    return open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path), "rb").read()


def test_text2img_writes_each_class_in_the_real_format_with_prompts_and_seeds(tiny_folder, tiny_sd, experiment, tmp_path):
    prompt_file = tmp_path / "prompts.yaml"
    prompt_file.write_text("bee: a macro photo of a bee on a flower\n")
    params = {"data": str(tiny_folder), "generator": "stable-diffusion", "model_id": str(tiny_sd), "prompt": "a photo of a {label}", "prompt_file": str(prompt_file), **QUICK}
    result = synthesize(params)
    frame = result.manifest.frame
    assert frame.groupby("label").size().to_dict() == {"ant": 2, "bee": 2, "cat": 2}
    assert set(frame["prompt"]) == {"a photo of a ant", "a macro photo of a bee on a flower", "a photo of a cat"}
    assert (frame["source"] == "synthetic").all() and (frame["run_id"] == result.run_id).all() and (frame["split"] == "train").all()
    assert frame["seed"].nunique() == 6
    for path in frame["path"]:
        image = Image.open(io.BytesIO(image_bytes(result.run_id, path)))
        assert image.format == "PNG" and image.mode == "L" and image.size == (16, 16)  # like the real images
    logged = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="dataset/manifest.csv"))
    assert logged["sha256"].tolist() == frame["sha256"].tolist()
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["synthmix.generator"] == "stable-diffusion" and run.data.metrics["perf/imgs_per_s"] > 0
    assert {a.path for a in MlflowClient().list_artifacts(result.run_id, "samples")} == {"samples/ant.png", "samples/bee.png", "samples/cat.png", "samples/all_classes.png"}
    again = synthesize(params)
    assert again.manifest.frame["sha256"].tolist() == frame["sha256"].tolist()  # same seed, same bytes
    other = synthesize({**params, "seed": 1})
    assert other.manifest.frame["sha256"].tolist() != frame["sha256"].tolist()


def test_img2img_records_the_real_train_image_each_output_came_from(tiny_folder, tiny_sd, experiment):
    result = synthesize({"data": str(tiny_folder), "generator": "img2img", "model_id": str(tiny_sd), "prompt": "{label} in heavy snow", "strength": 0.5, **QUICK})
    frame = result.manifest.frame
    manifest = __import__("imaging.datasets", fromlist=["scan_folder"]).scan_folder(tiny_folder)[0]
    train_paths = dict(zip(manifest.frame["path"], manifest.frame["split"]))
    for _, row in frame.iterrows():
        assert train_paths[row["source_image"]] == "train" and row["source_image"].startswith(row["label"] + "/")
        assert row["prompt"] == f"{row['label']} in heavy snow"
    assert frame.groupby("label")["source_image"].nunique().to_dict() == {"ant": 2, "bee": 2, "cat": 2}


def test_images_the_safety_checker_blanks_are_dropped_counted_and_replaced(tiny_folder, tiny_sd, experiment, monkeypatch):
    import models.generators.diffusion as diffusion

    loader = diffusion.load_text2img
    threshold = {"value": 2.0}  # brightness above which the fake checker blanks an image; 2.0 = never
    seen = []

    def with_checker(*args, **kwargs):
        pipe = loader(*args, **kwargs)
        checker = install_fake_safety_checker(pipe, threshold=threshold["value"])
        forward = checker.forward

        def recording(images, clip_input):
            seen.extend(float((torch.as_tensor(image).float().mean() + 1) / 2) for image in images)
            return forward(images, clip_input)

        checker.forward = recording
        return pipe

    monkeypatch.setattr(diffusion, "load_text2img", with_checker)
    params = {"data": str(tiny_folder), "generator": "stable-diffusion", "model_id": str(tiny_sd), **QUICK, "per_class": 4}
    probe = synthesize(params)
    assert MlflowClient().get_run(probe.run_id).data.metrics["synth/safety_dropped"] == 0
    threshold["value"] = float(np.quantile(seen, 0.75))  # blank the brightest quarter
    result = synthesize(params)
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["synth/safety_dropped"] >= 2
    frame = result.manifest.frame
    assert frame.groupby("label").size().to_dict() == {"ant": 4, "bee": 4, "cat": 4}
    changed = [a != b for a, b in zip(frame["seed"], probe.manifest.frame["seed"])]
    assert sum(changed) >= 2 and not all(changed)  # only the blanked images were drawn again, with new seeds
    for path in frame["path"]:
        assert np.asarray(Image.open(io.BytesIO(image_bytes(result.run_id, path)))).max() > 0  # no blanked image kept


@pytest.mark.parametrize("kind", ["dcgan", "vae", "ddpm"])
def test_trained_generator_logs_curves_checkpoint_quality_and_samples_again_from_its_run(kind, tiny_folder, experiment):
    params = {"data": str(tiny_folder), "generator": kind, "epochs": 1, "per_class": 5, "steps": 2, "quality_epochs": 1}
    result = synthesize(params)
    run_id = result.run_id
    run = MlflowClient().get_run(run_id)
    curves = [key for key in run.data.metrics if key.startswith("gen/")]
    assert curves and all([m.step for m in MlflowClient().get_metric_history(run_id, key)] == [0] for key in curves)
    assert 0 <= run.data.metrics["synth/cas"] <= 1 and 0 <= run.data.metrics["synth/detectability"] <= 1 and run.data.metrics["synth/fid"] >= 0
    assert 1 - 1e-9 <= run.data.metrics["synth/is"] <= 3 + 1e-9 and run.data.metrics["synth/is_std"] >= 0  # over the 3 classes
    assert {a.path for a in MlflowClient().list_artifacts(run_id, "generator")} >= {"generator/generator.pt"}
    frame = result.manifest.frame
    assert frame.groupby("label").size().to_dict() == {"ant": 5, "bee": 5, "cat": 5}
    image = Image.open(io.BytesIO(image_bytes(run_id, frame["path"][0])))
    assert image.mode == "L" and image.size == (16, 16)
    resampled = synthesize({**params, "generator_run": run_id, "quality": False})
    assert resampled.manifest.frame["sha256"].tolist() == frame["sha256"].tolist()
    assert "gen/loss" not in MlflowClient().get_run(resampled.run_id).data.metrics  # not retrained


def test_bad_synthesis_input_is_refused_before_any_run(tiny_folder, experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli("synthesize", "--data", str(tiny_folder), "--generator", "stable-diffusion", "--model-id", "someone/not-cached-model")
    assert result.returncode == 2
    assert "not" in result.stderr and "save_pretrained" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(InputError, match="--generator stable-diffusion needs --model-id"):
        synthesize({"data": str(tiny_folder), "generator": "stable-diffusion"})
    with pytest.raises(InputError, match=r"model .*nothing is not a folder; pass a folder written by"):
        synthesize({"data": str(tiny_folder), "generator": "img2img", "model_id": str(tmp_path / "nothing")})
    with pytest.raises(InputError, match=r"--prompt 'a \{kind\}' has a placeholder other than \{label\}"):
        synthesize({"data": str(tiny_folder), "generator": "stable-diffusion", "model_id": "x/y", "prompt": "a {kind}"})
    with pytest.raises(InputError, match="generator_run 'nope' is not in the tracking store"):
        synthesize({"data": str(tiny_folder), "generator": "vae", "generator_run": "nope"})
    assert runs_of(experiment) == []


def test_a_finished_synthesis_is_reused_without_loading_any_generator_or_pipeline(tiny_folder, tiny_sd, experiment, monkeypatch):
    import models.generators
    import models.generators.diffusion

    sd = {"data": str(tiny_folder), "generator": "stable-diffusion", "model_id": str(tiny_sd), **QUICK}
    vae = {"data": str(tiny_folder), "generator": "vae", "epochs": 1, "per_class": 3, "quality": False}
    first_sd, first_vae = synthesize(sd, reuse=True), synthesize(vae, reuse=True)
    assert not first_sd.reused and not first_vae.reused

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not load a generator or a pipeline")

    for module, name in ((models.generators.diffusion, "load_text2img"), (models.generators, "train_generator"), (models.generators, "load_generator")):
        monkeypatch.setattr(module, name, refuse)
    again_sd, again_vae = synthesize(sd, reuse=True), synthesize(vae, reuse=True)
    assert (again_sd.run_id, again_vae.run_id) == (first_sd.run_id, first_vae.run_id) and again_sd.reused and again_vae.reused
    assert again_sd.manifest.frame["sha256"].tolist() == first_sd.manifest.frame["sha256"].tolist()  # same result type, read back
    with pytest.raises(AssertionError, match="must not load"):  # a miss (another seed) does load it
        synthesize({**sd, "seed": 1}, reuse=True)
    assert len(runs_of(experiment, "synthesize")) == 2  # and leaves no run behind


def test_the_sample_grid_shows_class_rows_pixel_for_pixel_with_whole_class_names_and_no_seeds():
    import matplotlib.pyplot as plt

    from tracking.figures import class_rows_figure

    red = np.zeros((12, 28, 28, 3), np.uint8)
    red[..., 0] = 255
    grey = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)  # mnist5k's 28 px, one channel
    classes = ["a_rather_long_class_name_that_once_was_cut_off", "7"]
    for rows in ([red, red[:5]], [grey, grey[:3]]):
        fig = class_rows_figure(rows, classes, "vae: the first 12 synthetic images of each class")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        renderer = fig.canvas.get_renderer()
        width, height = fig.canvas.get_width_height()
        assert {text.get_text() for text in fig.texts} == {"vae: the first 12 synthetic images of each class", *classes}  # no seeds
        for text in fig.texts:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, text.get_text()
        plt.close(fig)
        picture = np.asarray(Image.open(buffer).convert("RGB"))
        if rows[0] is red:  # colour kept, each 28 px image enlarged to exactly 56 x 56 pure red pixels (no resampling)
            assert ((picture == [255, 0, 0]).all(axis=2)).sum() == 17 * 56 * 56
        else:  # grey rendered grey, and pixel for pixel: a 2 x 2 block per image pixel
            block = grey[0, :, :, 0].repeat(2, 0).repeat(2, 1)
            found = np.lib.stride_tricks.sliding_window_view(picture[:, :, 0], block.shape)
            assert (found == block).all(axis=(2, 3)).any()
            assert (picture[..., 0] == picture[..., 1]).all() and (picture[..., 1] == picture[..., 2]).all()


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    """Colour photo patches: 32 px PNG and 128 px JPEG, 3 classes x 6."""
    from imaging.photos import patches

    root = tmp_path_factory.mktemp("photos")
    for size, suffix in ((32, "png"), (128, "jpg")):
        for offset, name in enumerate(("cat", "coffee", "flower")):
            (root / f"p{size}" / name).mkdir(parents=True)
            for index, array in enumerate(patches(name, 6, size, seed=offset)):
                Image.fromarray(array).save(root / f"p{size}" / name / f"{index}.{suffix}")
    return root


TINY_OPTIONS = {"dcgan": {"base_channels": 8, "latent_dim": 8, "mode_seeking": 0.5}, "vae": {"base_channels": 8, "latent_dim": 4}, "ddpm": {"block_channels": "8,16", "steps": 2}}


@pytest.mark.parametrize("size", [32, 128])
@pytest.mark.parametrize("kind", ["dcgan", "vae", "ddpm"])
def test_trained_generators_write_colour_photos_at_the_real_size_and_format_with_their_seeds(kind, size, photo_folders, experiment):
    from models.generators import image_seed

    params = {"data": str(photo_folders / f"p{size}"), "generator": kind, "epochs": 1, "batch_size": 4, "per_class": 3, "quality": False, "seed": 5, **TINY_OPTIONS[kind]}
    result = synthesize(params)
    frame = result.manifest.frame
    assert frame.groupby("label").size().to_dict() == {"cat": 3, "coffee": 3, "flower": 3}
    assert frame["seed"].tolist() == [image_seed(5, index) for index in range(9)]  # image i's seed, as sampled
    image = Image.open(io.BytesIO(image_bytes(result.run_id, frame["path"][0])))
    assert (image.format, image.mode, image.size) == ("PNG" if size == 32 else "JPEG", "RGB", (size, size))
    config = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/generator/config.json")
    assert (config["image_height"], config["image_channels"]) == (size, 3)
    if kind == "dcgan":
        assert (config["conditioning"], config["pixel_noise"]) == ("projection", "half")  # the defaults since those options
    assert {k: config[k] for k in TINY_OPTIONS[kind] if k not in ("steps", "block_channels")} == {k: v for k, v in TINY_OPTIONS[kind].items() if k not in ("steps", "block_channels")}


def test_generator_options_are_checked_against_the_generator_before_any_run(photo_folders, experiment):
    result = run_cli("synthesize", "--data", str(photo_folders / "p32"), "--generator", "vae", "--upsample", "transposed")
    assert result.returncode == 2 and "--upsample applies to dcgan, cyclegan, not vae" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(InputError, match="--block-channels '8,12' must be two or more comma-separated multiples of 8"):
        synthesize({"data": str(photo_folders / "p32"), "generator": "ddpm", "block_channels": "8,12"})
    with pytest.raises(InputError, match="unknown augmentation blur"):
        synthesize({"data": str(photo_folders / "p32"), "generator": "dcgan", "diff_augment": "blur"})
    result = run_cli("synthesize", "--data", str(photo_folders / "p32"), "--generator", "dcgan", "--mode-seeking", "-1")
    assert result.returncode == 2 and "--mode-seeking '-1' must be a weight >= 0 (0 = off) or auto" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(InputError, match="--spectral-loss 'strong' must be a weight >= 0"):
        synthesize({"data": str(photo_folders / "p32"), "generator": "dcgan", "spectral_loss": "strong"})
    with pytest.raises(InputError, match="--spectral-loss applies to dcgan, not ddpm"):
        synthesize({"data": str(photo_folders / "p32"), "generator": "ddpm", "spectral_loss": "0.5"})
    with pytest.raises(InputError, match="--mode-seeking applies to dcgan, not vae"):
        synthesize({"data": str(photo_folders / "p32"), "generator": "vae", "mode_seeking": "0.2"})
    with pytest.raises(InputError, match="--conditioning applies to dcgan, not vae"):
        synthesize({"data": str(photo_folders / "p32"), "generator": "vae", "conditioning": "input"})
    result = run_cli("synthesize", "--data", str(photo_folders / "p32"), "--generator", "dcgan", "--conditioning", "both")
    assert result.returncode == 2 and "'both' is not one of 'auto', 'projection', 'input'" in result.stderr
    with pytest.raises(InputError, match="--pixel-noise applies to dcgan, not ddpm"):
        synthesize({"data": str(photo_folders / "p32"), "generator": "ddpm", "pixel_noise": "full"})
    with pytest.raises(InputError, match="--residual applies to cyclegan, not dcgan"):
        synthesize({"data": str(photo_folders / "p32"), "generator": "dcgan", "residual": "on"})
    from pipelines.synthesize import DEFAULTS, generator_options

    chosen = {choice: generator_options({**DEFAULTS, "generator": "cyclegan", "residual": choice}) for choice in ("auto", "on", "tanh", "off")}
    assert chosen == {"auto": {}, "on": {"residual": True, "residual_form": "linear"}, "tanh": {"residual": True, "residual_form": "tanh"},
                      "off": {"residual": False, "residual_form": "linear"}}
    assert generator_options({**DEFAULTS, "generator": "cyclegan", "upsample": "resize"}) == {"upsample": "resize"}  # the translator's up-sampling is a stage option too
    assert generator_options({**DEFAULTS, "generator": "cyclegan", "diff_augment": "translation,cutout"}) == {"augment": "translation,cutout"}
    assert generator_options({**DEFAULTS, "generator": "cyclegan", "diff_augment": "none"}) == {"augment": ""}
    with pytest.raises(InputError, match="--diff-augment applies to dcgan, cyclegan, not vae"):
        generator_options({**DEFAULTS, "generator": "vae", "diff_augment": "cutout"})
    assert generator_options({**DEFAULTS, "generator": "cyclegan", "semantic_weight": 2.0, "semantic_epochs": 3}) == {"semantic_weight": 2.0, "semantic_epochs": 3}
    with pytest.raises(InputError, match="--semantic-epochs 3 trains the semantic loss's classifier, which only --semantic-weight above 0 uses"):
        generator_options({**DEFAULTS, "generator": "cyclegan", "semantic_epochs": 3})
    with pytest.raises(InputError, match="--semantic-epochs applies to cyclegan, not dcgan"):
        generator_options({**DEFAULTS, "generator": "dcgan", "semantic_epochs": 3})
    assert runs_of(experiment) == []
