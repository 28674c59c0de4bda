"""Trained generators (dcgan, vae, ddpm) and the Stable Diffusion wrappers, on
tiny random data and a tiny random pipeline built here: no downloads."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imaging.errors import InputError
from models.generators import GENERATORS_TRAINED, image_seed, load_generator, train_generator
from tiny_sd import build_tiny_sd, install_fake_safety_checker

# per kind: the smallest architecture that still exercises every layer type
TINY = {
    "dcgan": dict(base_channels=8, latent_dim=8, embed_dim=4),
    "vae": dict(base_channels=8, latent_dim=4),
    "ddpm": dict(block_channels=(8, 16), steps=2),
}
SHAPES = {"grey28": (1, 28, 28, 10), "rgb32": (3, 32, 32, 3), "rgb128": (3, 128, 128, 3)}  # channels, height, width, classes


def tiny_data(channels: int, height: int, width: int, classes: int, n: int = 32):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    # each class a different brightness, so the data has something to learn
    base = (labels.float() + 1) / (classes + 1) * 255
    noise = torch.rand((n, channels, height, width), generator=generator) * 60 - 30
    images = (base[:, None, None, None] + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


@pytest.fixture(scope="module", params=[(kind, shape) for kind in GENERATORS_TRAINED for shape in SHAPES], ids=lambda p: f"{p[0]}-{p[1]}")
def trained(request):
    kind, shape = request.param
    channels, height, width, classes = SHAPES[shape]
    images, labels = tiny_data(channels, height, width, classes)
    epochs_seen: list[tuple[int, dict]] = []
    model = train_generator(
        kind, images, labels, classes, epochs=1, batch_size=16, seed=0, progress=False,
        on_epoch=lambda epoch, metrics: epochs_seen.append((epoch, metrics)), **TINY[kind],
    )
    return kind, model, (channels, height, width, classes), epochs_seen


def test_samples_have_the_shape_dtype_and_range_of_the_data(trained):
    _, model, (channels, height, width, classes), _ = trained
    labels = torch.tensor([0, classes - 1, 1, 0, 2])
    images = model.sample(labels, seed=3)
    assert images.shape == (5, channels, height, width)
    assert images.dtype == torch.uint8 and images.device.type == "cpu"
    assert images.float().std() > 0  # not a constant image


def test_sampling_is_deterministic_per_seed_and_per_image(trained):
    _, model, (_, _, _, classes), _ = trained
    labels = torch.tensor([0, 1, 2, 0, 1, 2]) % classes
    first = model.sample(labels, seed=7)
    assert torch.equal(first, model.sample(labels, seed=7))
    assert not torch.equal(first, model.sample(labels, seed=8))
    # image i depends on (seed, i, label), not on the batch it was drawn in
    in_pairs = model.sample(labels, seed=7, batch_size=2)
    assert (in_pairs.int() - first.int()).abs().max() <= 1


def test_on_epoch_gets_finite_namespaced_metrics(trained):
    kind, _, _, epochs_seen = trained
    assert [epoch for epoch, _ in epochs_seen] == [0]
    metrics = epochs_seen[0][1]
    expected = {"dcgan": {"gen/loss_d", "gen/loss_g"}, "vae": {"gen/loss", "gen/kl"}, "ddpm": {"gen/loss"}}[kind]
    assert expected <= set(metrics)
    assert all(math.isfinite(value) for value in metrics.values())


def test_checkpoint_rebuilds_the_same_generator(trained, tmp_path):
    kind, model, (channels, height, width, classes), _ = trained
    path = model.save(tmp_path / "generator.pt")
    loaded = load_generator(path)
    assert loaded.kind == kind and (loaded.channels, loaded.height, loaded.width, loaded.num_classes) == (channels, height, width, classes)
    labels = torch.arange(4) % classes
    assert torch.equal(loaded.sample(labels, seed=1), model.sample(labels, seed=1))


def test_ddpm_samplers_all_run_and_ancestral_sampling_is_seeded():
    images, labels = tiny_data(1, 28, 28, 10, n=32)
    model = train_generator("ddpm", images, labels, 10, epochs=1, batch_size=32, progress=False, **TINY["ddpm"])
    labels = torch.tensor([0, 1])
    by_scheduler = {name: model.sample(labels, seed=0, steps=3, scheduler=name) for name in ("dpm", "ddim", "ddpm")}
    assert all(images.shape == (2, 1, 28, 28) for images in by_scheduler.values())
    assert not torch.equal(by_scheduler["ddim"], by_scheduler["ddpm"])  # ancestral sampling adds fresh noise
    assert torch.equal(by_scheduler["ddpm"], model.sample(labels, seed=0, steps=3, scheduler="ddpm"))
    with pytest.raises(ValueError, match="unknown scheduler 'euler'"):
        model.sample(labels, seed=0, scheduler="euler")


def test_bad_labels_and_kinds_are_rejected():
    images, labels = tiny_data(1, 28, 28, 10, n=8)
    with pytest.raises(ValueError, match="unknown generator kind"):
        train_generator("gan", images, labels, 10)
    with pytest.raises(ValueError, match="labels must lie in 0..4"):
        train_generator("vae", images, labels, 5, epochs=1)
    with pytest.raises(ValueError, match="no option"):
        train_generator("vae", images, labels, 10, epochs=1, block_channels=(8,))


def test_image_seed_separates_seed_and_index():
    seeds = {image_seed(seed, index) for seed in range(20) for index in range(20)}
    assert len(seeds) == 400
    assert all(0 <= value < 2**63 for value in seeds)


# ---- Stable Diffusion wrappers, on a tiny random pipeline ------------------------------------


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def text2img(tiny_sd_folder):
    from models.generators.diffusion import load_text2img

    return load_text2img(tiny_sd_folder)


def test_text2img_makes_one_image_per_prompt_and_seed(text2img):
    from models.generators.diffusion import generate_text2img

    prompts = ["a photo of the digit one", "a photo of the digit two", "a photo of the digit one"]
    results = generate_text2img(text2img, prompts, [11, 12, 11], steps=2, batch_size=2, progress=False)
    assert [(image.size, image.mode, flagged) for image, flagged in results] == [((32, 32), "RGB", False)] * 3
    pixels = [np.asarray(image).astype(int) for image, _ in results]

    def same_image(a, b):
        # a batch of another size may take other float kernels (with one CPU thread it does): the same image,
        # give or take one grey level in a few values; another seed differs by ~40 levels on average
        return np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01

    # same prompt and seed -> the same image, though drawn in a different batch
    assert same_image(pixels[0], pixels[2])
    assert np.abs(pixels[0] - pixels[1]).mean() > 10
    again = generate_text2img(text2img, prompts[1:2], [12], steps=2, progress=False)
    assert same_image(np.asarray(again[0][0]).astype(int), pixels[1])


def test_img2img_keeps_the_source_size_and_is_seeded(tiny_sd_folder):
    from PIL import Image

    from models.generators.diffusion import generate_img2img, load_img2img

    pipe = load_img2img(tiny_sd_folder, scheduler="dpm")
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    sources = [Image.new("L", (32, 32), 40), Image.new("L", (32, 32), 200)]
    results = generate_img2img(pipe, sources, ["snow", "snow"], [1, 2], strength=0.5, steps=4, progress=False)
    assert [image.size for image, _ in results] == [(32, 32), (32, 32)]
    again = generate_img2img(pipe, sources[:1], ["snow"], [1], strength=0.5, steps=4, progress=False)
    assert np.array_equal(np.asarray(again[0][0]), np.asarray(results[0][0]))
    with pytest.raises(InputError, match="strength"):
        generate_img2img(pipe, sources[:1], ["snow"], [1], strength=0.0)


def test_flagged_images_come_back_black_and_marked(text2img):
    from models.generators.diffusion import generate_text2img

    prompts, seeds = ["a photo of six"] * 4, [0, 1, 2, 3]
    clean = generate_text2img(text2img, prompts, seeds, steps=2, progress=False)
    brightness = sorted(np.asarray(image).mean() / 255 for image, _ in clean)
    threshold = (brightness[1] + brightness[2]) / 2  # the two brightest get flagged
    install_fake_safety_checker(text2img, threshold)
    try:
        results = generate_text2img(text2img, prompts, seeds, steps=2, progress=False)
    finally:
        text2img.safety_checker = None
        text2img.feature_extractor = None
    assert sum(flagged for _, flagged in results) == 2
    for (image, flagged), (clean_image, _) in zip(results, clean, strict=True):
        assert flagged == (np.asarray(clean_image).mean() / 255 > threshold)
        assert (np.asarray(image).max() == 0) == flagged


def test_saved_safety_checker_is_loaded_and_flags(tmp_path):
    from models.generators.diffusion import generate_text2img, load_text2img

    pipe = load_text2img(build_tiny_sd(tmp_path / "checked", safety_checker=True))
    assert type(pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    results = generate_text2img(pipe, ["a photo of one"], [0], steps=1, progress=False)
    assert results[0][1] is True and np.asarray(results[0][0]).max() == 0


def test_uncached_hub_id_offline_says_what_to_do(monkeypatch, tmp_path):
    from models.generators.diffusion import load_text2img

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(InputError, match=r"'synthmix-tests/no-such-model' is not in the local Hugging Face cache and synthmix is offline; pass a local folder saved with save_pretrained"):
        load_text2img("synthmix-tests/no-such-model")


def test_missing_or_non_diffusers_folder_is_named(tmp_path):
    from models.generators.diffusion import load_img2img, load_text2img

    missing = tmp_path / "no-such-folder"
    with pytest.raises(InputError, match=f"model {missing} is not a folder"):
        load_text2img(str(missing))
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="has no model_index.json"):
        load_img2img(tmp_path / "plain")
    with pytest.raises(InputError, match="--scheduler 'fast' is not known; choose one of ddim, dpm"):
        load_text2img(tmp_path / "plain", scheduler="fast")


# ---- growth with the image size, presets, DiffAugment ----------------------------------------


@pytest.mark.parametrize(("side", "stages", "base"), [(28, 2, 7), (32, 3, 4), (64, 4, 4), (100, 4, 7), (128, 5, 4), (256, 6, 4)])
def test_networks_grow_one_stage_per_doubling_of_the_side(side, stages, base):
    from models.generators.base import stage_layout

    assert stage_layout(side, side) == (stages, base, base)


@pytest.mark.parametrize("kind", ["dcgan", "vae"])
def test_conv_generators_add_a_stage_per_doubling(kind):
    from models.generators import default_hyperparameters
    from models.generators.base import seeded_model

    module = __import__(f"models.generators.{kind}", fromlist=["build"])
    counts = {}
    for side in (32, 64, 128):
        images = torch.zeros((2, 3, side, side), dtype=torch.uint8)
        model = seeded_model(type(module.build({**default_hyperparameters(kind), "num_classes": 2, "image_channels": 3, "image_height": 8, "image_width": 8})),
                             images, 2, {**default_hyperparameters(kind, side, side), "base_channels": 8}, seed=0, device="cpu")
        network = model.generator if kind == "dcgan" else model.decoder
        counts[side] = sum(isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Upsample)) for m in network.modules())
    assert counts == {32: 3, 64: 4, 128: 5}


def test_presets_follow_the_image_size():
    from models.generators import default_hyperparameters

    assert default_hyperparameters("dcgan", 28, 28)["base_channels"] > default_hyperparameters("dcgan", 128, 128)["base_channels"]
    assert default_hyperparameters("ddpm", 64, 64)["block_channels"] == (16, 32, 64, 64)
    assert len(default_hyperparameters("ddpm", 128, 128)["block_channels"]) == 5
    assert default_hyperparameters("vae") == default_hyperparameters("vae", 28, 28) | {"epochs": 30}


def test_diff_augment_keeps_shape_and_gradient_and_changes_the_images():
    from models.generators.augment import cutout, diff_augment, parse_policy, translation

    x = (torch.rand((4, 3, 16, 16)) * 2 - 1).requires_grad_()
    out = diff_augment(x, parse_policy("color,translation,cutout"), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)
    out.sum().backward()  # differentiable: the generator learns through it
    assert x.grad is not None and x.grad.abs().sum() > 0
    ones = torch.ones((64, 1, 16, 16))
    holes = (cutout(ones, torch.Generator().manual_seed(1)) == 0).flatten(1).sum(1)
    assert holes.max() == 64 and holes.min() > 0  # an 8 x 8 square, clipped at the border
    moved = translation(torch.arange(256.0).reshape(1, 1, 16, 16).repeat(32, 1, 1, 1), torch.Generator().manual_seed(2))
    assert (moved == 0).flatten(1).sum(1).max() <= 16 * 16 - 14 * 14  # at most 2 rows and 2 columns shifted in
    with pytest.raises(ValueError, match="unknown augmentation blur"):
        parse_policy("color,blur")


def test_artefact_measures_see_a_checkerboard_and_a_collapse():
    from imaging.artefacts import artefact_ratios, high_frequency_share, within_class_diversity

    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (20, 3, 4, 4)), 8, axis=2), 8, axis=3).astype(np.uint8)
    checker = (np.indices((32, 32)).sum(0) % 2 * 60)[None, None]
    dithered = np.clip(smooth.astype(int) + checker, 0, 255).astype(np.uint8)
    assert high_frequency_share(dithered).min() > 3 * high_frequency_share(smooth).max()
    labels = np.arange(20) % 2
    collapsed = np.repeat(smooth[:2], 10, axis=0)[np.argsort(np.argsort(labels, kind="stable"))]
    assert within_class_diversity(collapsed, labels) == 0
    ratios = artefact_ratios(smooth, labels, dithered, labels)
    assert ratios["hf_ratio_min"] > 2 and 0.9 < ratios["diversity_ratio"] < 1.5


def test_the_mode_seeking_term_punishes_one_image_for_every_noise_vector_not_pixel_noise():
    from models.generators.dcgan import mode_seeking_term

    generator = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn((8, 16), generator=generator), torch.randn((8, 16), generator=generator)
    layouts = torch.rand((16, 3, 8, 8), generator=generator) * 2 - 1
    big = torch.nn.functional.interpolate(layouts, scale_factor=4, mode="nearest")  # 32 px images that differ in layout and colour
    collapsed = big[:8]
    jitter = collapsed + 0.3 * torch.randn(collapsed.shape, generator=generator).sign()  # the same images under pixel noise
    assert mode_seeking_term(collapsed, collapsed, z_a, z_b) > 1e3  # no difference at all: the term is huge
    diverse = mode_seeking_term(big[:8], big[8:], z_a, z_b)
    assert diverse < 3  # images that differ as much as their noise vectors: about 1 / 0.6
    assert mode_seeking_term(collapsed, jitter, z_a, z_b) > 5 * diverse  # pixel noise does not buy diversity


def test_the_spectral_term_measures_what_the_artefact_ratio_does_and_its_gradient_restores_the_top_band():
    """The spectral term (--spectral-loss) compares radial power-spectrum shares: 0 for a batch with the real
    images' spectrum, large for a blurred or a dithered one, and gradient steps on it alone move a blurred batch's
    top-band share (imaging/artefacts.py's HF measure) from far below the real images' to within 2x of it."""
    from imaging.artefacts import high_frequency_share
    from models.generators.spectral import radial_power_shares, spectral_term

    generator = torch.Generator().manual_seed(0)
    real = torch.rand((16, 3, 32, 32), generator=generator) * 2 - 1
    real = torch.nn.functional.avg_pool2d(real, 3, 1, 1, count_include_pad=False)  # photo-like: energy falls with frequency
    shares = radial_power_shares(real)
    assert shares.shape == (3, 8) and torch.allclose(shares.sum(1), torch.ones(3))
    assert spectral_term(real.flip(0), real) < 1e-5  # the same spectrum, other order
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(real, 4), scale_factor=4, mode="bilinear")
    dithered = real + 0.3 * (torch.arange(32).view(1, 32) + torch.arange(32).view(32, 1)).remainder(2).sub(0.5)
    assert spectral_term(blurred, real) > 1 and spectral_term(dithered, real) > 0.3

    def hf_ratio(x):
        as_uint8 = ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return high_frequency_share(as_uint8) / high_frequency_share(((real + 1) * 127.5).round().to(torch.uint8))

    assert hf_ratio(blurred).max() < 0.2
    fake = blurred.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([fake], lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        spectral_term(fake, real).backward()
        optimizer.step()
    assert 0.5 <= hf_ratio(fake).min() and hf_ratio(fake).max() <= 2
    assert spectral_term(fake, real) < 0.3 * spectral_term(blurred, real)


def test_the_projection_discriminator_scores_an_image_by_its_class_and_old_checkpoints_still_load(tmp_path):
    from models.generators import dcgan, load_generator
    from models.generators.base import save_checkpoint

    torch.manual_seed(0)
    critic = dcgan.Discriminator(3, 3, [8, 16], 16, normalise=True, conditioning="projection")
    images = torch.rand((6, 3, 16, 16)) * 2 - 1
    critic.eval()  # spectral norm's power iteration stands still: every call below sees the same weights
    with torch.no_grad():
        critic.project.weight_orig.copy_(torch.randn_like(critic.project.weight_orig))
        scores = torch.stack([critic(images, torch.full((6,), label)) for label in range(3)])
        pooled, directions = critic.features(images).sum((2, 3)), critic.project(torch.arange(3))
    # the same image as another class scores by the classes' directions in D's pooled features, nothing else
    for a, b in ((0, 1), (1, 2), (0, 2)):
        torch.testing.assert_close(scores[a] - scores[b], pooled @ (directions[a] - directions[b]), rtol=1e-4, atol=1e-5)
    assert (scores[0] - scores[1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="choose projection or input"):
        dcgan.Discriminator(3, 3, [8], 16, normalise=False, conditioning="both")

    # a checkpoint written before the option (its config has no "conditioning", its D took label maps) rebuilds as such
    config = {**dcgan.defaults_for(16, 16), "conditioning": "input", "base_channels": 8, "latent_dim": 4, "num_classes": 2, "image_channels": 3, "image_height": 16, "image_width": 16}
    old = dcgan.DCGAN(config)
    del old.config["conditioning"]
    rebuilt = load_generator(save_checkpoint(old, tmp_path / "old.pt"))
    assert rebuilt.config["conditioning"] == "input" and rebuilt.discriminator.project is None


def test_dcgan_pixel_noise_added_at_half_resolution_is_smoothed_and_old_checkpoints_keep_it_at_full(tmp_path):
    """The pixel noise's place (--pixel-noise): "half" adds it before the last up-sampling stage, so what it
    changes in an image has less top-band energy than the same noise at the output's resolution ("full", the
    layout before the option); "none" has none. A checkpoint from before the option rebuilds with "full"."""
    from imaging.artefacts import high_frequency_share
    from models.generators import dcgan, load_generator
    from models.generators.base import save_checkpoint

    base = {**dcgan.defaults_for(32, 32), "base_channels": 8, "latent_dim": 4, "num_classes": 2, "image_channels": 3, "image_height": 32, "image_width": 32}
    z, labels = torch.randn((8, 4), generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 4)
    shares = {}
    for mode, shape in (("half", (1, 16, 16)), ("full", (1, 32, 32))):
        torch.manual_seed(1)
        model = dcgan.DCGAN({**base, "pixel_noise": mode}).eval()
        assert model.noise_shape == shape
        with torch.no_grad():
            model.noise.strength.fill_(1.0)  # learnt from 0; here as if trained to unit strength
            draws = [model.generate(z, labels, torch.randn((8, *shape), generator=torch.Generator().manual_seed(seed))) for seed in (2, 3)]
        change = draws[0] - draws[1]  # what the pixel noise alone does to the images
        assert change.abs().mean() > 1e-3
        shares[mode] = high_frequency_share(((change / change.abs().max() + 1) * 127.5).round().to(torch.uint8)).mean()
    assert shares["half"] < 0.5 * shares["full"], shares
    quiet = dcgan.DCGAN({**base, "pixel_noise": "none"}).eval()
    assert quiet.noise is None and all(m is not None for m in quiet.generator_modules())
    with pytest.raises(ValueError, match="choose half, full, none"):
        dcgan.DCGAN({**base, "pixel_noise": "quarter"})

    old = dcgan.DCGAN({**base, "pixel_noise": "full", "conditioning": "projection"})
    del old.config["pixel_noise"]
    rebuilt = load_generator(save_checkpoint(old, tmp_path / "old.pt"))
    assert rebuilt.config["pixel_noise"] == "full" and rebuilt.noise_shape == (1, 32, 32)
    torch.testing.assert_close(rebuilt.state_dict(), old.state_dict())
