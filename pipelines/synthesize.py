"""synthesize: write N class-labelled synthetic images per class, and score them.

    python -m pipelines synthesize --data mnist5k --generator vae --per-class 400
    python -m pipelines synthesize --data ./cars --generator stable-diffusion --model-id ./sd-folder \\
        --prompt "A photorealistic photograph of a {label}, natural lighting"
    python -m pipelines synthesize --data ./streets --generator img2img --model-id ./sd-folder --prompt "{label} in heavy snow"
    python -m pipelines synthesize --data ./streets --generator cyclegan --target-data ./snowy-streets

Generators: `dcgan`, `vae`, `ddpm` are class-conditional models trained here on
the real *train* split only (their curves `gen/*` per epoch and the checkpoint
`generator/generator.pt` are logged; `--generator-run <id>` samples from that
run's generator without retraining). `stable-diffusion` is a pretrained
diffusers text-to-image pipeline, one prompt per class; `img2img` turns real
train images into new ones (each output records its source image).
`cyclegan` trains a CycleGAN between the real train split (all classes) and
--target-data, a folder of unlabelled target-domain images, and writes a
translated copy of each real train image (its label kept, its source image
recorded, and samples/before_after.png shows real images above their
translations); see models/generators/cyclegan.py for its settings.

Images are written as `images/<class>/<index>.png` (JPEG if the real images
are JPEG) at the real images' size and colour mode, with `dataset/manifest.csv`
recording each image's label, seed, prompt or source image and generator, a
sample grid per class under `samples/` (and all classes in `samples/all_classes.png`), perf/imgs_per_s for sampling, and
quality scores: synth/cas (classifier trained on synthetic only, accuracy on
the real test split), synth/fid (Fréchet distance between real test and
synthetic features), synth/is and synth/is_std (Inception Score, mean and
standard deviation over 10 splits) and synth/detectability (held-out accuracy
of a real-vs-synthetic classifier; 0.5 = indistinguishable).

FID and IS come from `--quality-backbone`: `classifier` (default) is a small
CNN trained on the real train split, so FID is in its features and IS is over
the dataset's own classes (1 to the class count); `inception` is torchvision's
Inception-v3 with its ImageNet weights, read from the torch hub cache only
(2048-d pool features, 1000 ImageNet classes). Neither is the published
metric: never compare these numbers with published Inception-v3 FID or IS.
"""
from __future__ import annotations

from dataclasses import dataclass

import click

from pipelines._cli import DEVICE, data_params, defaults, option, optional, stage_command

GENERATORS = ("dcgan", "vae", "ddpm", "cyclegan", "stable-diffusion", "img2img")
TRAINED = ("dcgan", "vae", "ddpm", "cyclegan")  # trained here on the real train split; the others are pretrained pipelines
QUALITY_BACKBONES = ("classifier", "inception")  # what FID and IS are read from
DEFAULT_PROMPT = "A photorealistic, highly detailed 8K photograph of a {label} in various settings and poses, natural lighting, sharp focus"
PARAMS = [
    *data_params(help_suffix=" Generators are trained on (and img2img starts from) its train split only."),
    option("generator", "vae", "dcgan, vae, ddpm: trained here on the real train split; cyclegan: translates the real train images to --target-data's domain; stable-diffusion: pretrained text-to-image; img2img: pretrained image-to-image over the real train images.", click.Choice(GENERATORS)),
    option("per_class", 0, "Synthetic images per class; 0 = as many as the largest real train class (cyclegan: real train images translated per class, at most; 0 = all).", click.IntRange(0)),
    option("target_data", "", "cyclegan: folder of unlabelled target-domain images (png/jpg, flat or in sub-folders), e.g. snowy photos; each is converted to the real images' colour mode "
           "and size (a non-square image is centre-cropped to a square first, not stretched)."),
    option("generator_run", "", "Sample from the generator trained by this earlier synthesize run instead of training a new one."),
    option("epochs", 0, "Generator training epochs; 0 = the generator's default.", click.IntRange(0)),
    option("batch_size", 0, "Generator training batch size; 0 = the generator's default.", click.IntRange(0)),
    option("lr", 0.0, "Generator learning rate; 0 = the generator's default (cyclegan: the paper's Adam 2e-4, beta1 0.5, constant for the first half of the steps, then linearly to 0).", click.FloatRange(0)),
    option("base_channels", 0, "dcgan, vae: channels of the full-resolution conv stage, doubled per halving of the side (up to 256); cyclegan: channels of the generators' and discriminators' first conv "
           "(the paper's 64); 0 = by image size (dcgan 32/16/8, vae 32/16/8 at 32/64/128 px; cyclegan 16/16/8 at 32/64/128 px, 8 above).", click.IntRange(0)),
    option("latent_dim", 0, "dcgan, vae: size of the noise vector z; 0 = the generator's default (dcgan 64; vae 16/64/128 at 32/64/128 px).", click.IntRange(0)),
    option("block_channels", "", "ddpm: channels of each UNet level, comma-separated, one level per entry (each but the last halves the map); empty = by image size (16,32,32 at 32 px; 16,32,64,64 at 64 px; 16,32,32,64,64 at 128 px)."),
    option("upsample", "auto", "dcgan: resize (nearest x2 then a 3x3 conv: no checkerboard) or transposed (the DCGAN paper's 4x4 stride-2 transposed conv); auto = resize. "
           "cyclegan: the generators' two up-sampling layers, resize (nearest x2 then a 3x3 conv) or transposed (the paper's 3x3 stride-2 transposed conv); auto = transposed.", click.Choice(["auto", "resize", "transposed"])),
    option("conditioning", "auto", "dcgan: how the discriminator sees the label: projection (Miyato & Koyama 2018: a learnt direction per class in its feature space, so a fake "
           "is judged as an image of its class) or input (one-hot label maps beside the image, the usual DCGAN conditioning); auto = projection.", click.Choice(["auto", "projection", "input"])),
    option("pixel_noise", "auto", "dcgan: where the generator adds its per-pixel noise (scaled per channel, learnt from 0; Karras et al. 2019): half = before the last up-sampling stage, "
           "whose nearest x2 + 3x3 conv smooths it; full = at the output's resolution (the default before; it can become a top-frequency dither); none = no pixel noise; auto = half.",
           click.Choice(["auto", "half", "full", "none"])),
    option("diff_augment", "auto", "dcgan, cyclegan: DiffAugment policies applied to real and generated images before the discriminator(s), comma-separated from color, translation, cutout; none = off; auto = the generator's default (dcgan: all three; cyclegan: none, the paper's).", str),
    option("spectral_norm", True, "dcgan: spectral normalisation of the discriminator's layers.", bool),
    option("ema_decay", 0.0, "dcgan, ddpm: decay of the exponential moving average of the generator's weights that samples (per training step); 0 = the generator's default (dcgan 0.999, ddpm 0.995).", click.FloatRange(0, 1, max_open=True)),
    option("mode_seeking", "auto", "dcgan: weight of the mode-seeking term (Mao et al. 2019: 1 / the distance between two images of a class over the distance between their noise vectors, "
           "on images pooled 4 x 4); it keeps every noise vector from drawing the same image (mode collapse). 0 = off; auto = 0.1.", str),
    option("spectral_loss", "auto", "dcgan: weight of the spectral term (after Durall et al. 2020): the mean |log| ratio of the generated and real batches' shares of spectral energy in 8 radial "
           "frequency bands, added to the generator's loss; it keeps samples from being blurrier or more dithered than the real images. 0 = off; auto = 0.3.", str),
    option("residual", "auto", "cyclegan: on = each generator outputs its input plus a change (its last conv, which starts at 0), clipped to the pixel range: it starts as the identity, "
           "keeps the image's detail and colour, and the label survives (README, CycleGAN); tanh = that change added before a tanh (tanh(atanh(x) + change)), which learns a brightening "
           "shift slowly; off = the paper's generator, which draws the whole image (blurred after a CPU-sized training); auto = on.", click.Choice(["auto", "on", "tanh", "off"])),
    option("blocks", 0, "cyclegan: residual blocks of each generator; 0 = the paper's: 6 up to 128 px, 9 above.", click.IntRange(0)),
    option("cycle_weight", 13.0, "cyclegan: weight of the L1 cycle-consistency loss (lambda); 13 with the residual generator, where the paper's 10 let some "
           "translations lose their class to the shift (README, CycleGAN); use 10 with --residual off.", click.FloatRange(0)),
    option("identity_weight", 3.0, "cyclegan: weight of the L1 identity loss, which asks each generator to leave images of its own output domain as they are; 3 with the residual "
           "generator, which keeps colour by construction (at the paper's 0.5 x lambda = 5 it drew snow's flakes too faintly: README, CycleGAN); use 5 with --residual off; 0 = off.", click.FloatRange(0)),
    option("semantic_weight", 0.0, "cyclegan: weight of the semantic loss (CyCADA, Hoffman et al. 2018): a classifier trained on the real train images first (its epochs count in the train time) "
           "scores each translation, and its cross-entropy against the real image's label is added to the generator's loss, so a translation keeps its class; 0 = off (the paper's).", click.FloatRange(0)),
    option("semantic_epochs", 8, "cyclegan, with --semantic-weight above 0: epochs of the semantic loss's classifier (a smallcnn, trained on the real train images before the translator).", click.IntRange(1)),
    option("pool_size", 50, "cyclegan: generated images kept for each discriminator, shown in place of new ones half the time (the paper's 50); 0 = no pool.", click.IntRange(0)),
    option("steps", 0, "Sampling steps: ddpm's few-step sampler (1000 = full DDPM) or Stable Diffusion's inference steps; 0 = default (25 for Stable Diffusion).", click.IntRange(0)),
    option("model_id", "", "Stable Diffusion: a local folder saved with save_pretrained, or a hub id already in the local cache."),
    option("prompt", DEFAULT_PROMPT, "Prompt template; {label} becomes the class name."),
    option("prompt_file", "", "YAML or JSON file mapping class names to their own prompts (others use --prompt)."),
    option("negative_prompt", "", "What the images should not show (Stable Diffusion)."),
    option("guidance_scale", 7.5, "Classifier-free guidance scale (Stable Diffusion).", click.FloatRange(0)),
    option("scheduler", "", "Stable Diffusion sampler: ddim, dpm, euler, euler-ancestral, pndm, unipc; empty keeps the pipeline's own."),
    option("strength", 0.6, "img2img: how far from the source image to go (1 ignores it).", click.FloatRange(0, 1, min_open=True)),
    option("sd_batch_size", 4, "Images per Stable Diffusion call.", click.IntRange(1)),
    option("quality", True, "true: score the images (synth/cas, synth/fid, synth/is, synth/detectability).", bool),
    option("quality_backbone", "classifier", "Network FID and IS are read from. classifier: a small CNN trained on the real train split "
           "(FID in its features, IS over the dataset's classes, 1 to the class count); inception: torchvision's Inception-v3 ImageNet weights, "
           "which must already be in $TORCH_HOME/hub/checkpoints (2048-d pool features at 299 px, IS over 1000 ImageNet classes). "
           "Not comparable with published Inception-v3 FID or IS.", click.Choice(QUALITY_BACKBONES)),
    option("quality_epochs", 5, "Epochs of the small classifiers behind the quality scores.", click.IntRange(1)),
    option("seed", 0, "Seed of generator training and sampling; image i uses a seed derived from (seed, i), recorded in the manifest.", int),
    DEVICE,
]
DEFAULTS = defaults(PARAMS)
NOT_HASHED = ("device", "sd_batch_size")
SAMPLES_PER_ROW = 12  # images per class in samples/all_classes.png
MAX_SAFETY_RETRIES = 5  # new seeds tried for an image the safety checker blanked


def class_prompts(params: dict, classes: list[str]) -> dict[str, str]:
    """The prompt of each class: the --prompt-file entry, else the --prompt template with {label}."""
    from pathlib import Path

    from imaging.errors import InputError

    prompts = {}
    if optional(params["prompt_file"]):
        path = Path(params["prompt_file"]).expanduser()
        if not path.is_file():
            raise InputError(f"--prompt-file {path} does not exist; pass a YAML or JSON file mapping class names to prompts.")
        import yaml

        try:
            loaded = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except yaml.YAMLError as error:
            raise InputError(f"--prompt-file {path} is not valid YAML or JSON ({error.__class__.__name__}); write one 'class: prompt' line per class.") from error
        if not isinstance(loaded, dict):
            raise InputError(f"--prompt-file {path} must map class names to prompts, e.g. 'cat: a photo of a cat'.")
        prompts = {str(k): str(v) for k, v in loaded.items()}
        unknown = sorted(set(prompts) - set(classes))
        if unknown:
            raise InputError(f"--prompt-file {path} names classes the data does not have: {unknown}; use the class folder names {classes}.")
    template = params["prompt"] or DEFAULT_PROMPT
    for label in classes:
        if label not in prompts:
            try:
                prompts[label] = template.format(label=label)
            except (KeyError, IndexError, ValueError) as error:
                raise InputError(f"--prompt {template!r} has a placeholder other than {{label}} ({error}); write e.g. 'a photo of a {{label}}'.") from error
    return prompts


def _to_real_format(image, channels: int, size: int):
    """A PIL image as uint8 HWC in the real images' channels and size."""
    import numpy as np
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def synthesize(params: dict, *, nested: bool = False, run_name: str | None = None, reuse: bool = False, tags: dict | None = None):
    """Synthesize with `params` (DEFAULTS filled in); returns a StageResult with the quality scores and the manifest.

    The cache key needs only the data's digests and the parameters: a hit loads no generator or pipeline.
    """
    from imaging.errors import InputError
    from imaging.images import open_image
    from imaging.manifest import native_format, real_only
    from tracking.lineage import load_manifest
    from tracking.runs import quiet_mlflow
    from tracking.stage import cache_key, get_or_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    kind = params["generator"]
    if kind not in GENERATORS:
        raise InputError(f"--generator {kind!r} is not known; choose one of {', '.join(GENERATORS)}.")
    if params["per_class"] < 0 or params["epochs"] < 0 or params["steps"] < 0:
        raise InputError("--per-class, --epochs and --steps count things and must be 0 (the default) or more.")
    target_folder = check_target_data(params)  # before the real data is scanned, which can take a while
    if params["quality_backbone"] not in QUALITY_BACKBONES:
        raise InputError(f"--quality-backbone {params['quality_backbone']!r} is not known; choose {' or '.join(QUALITY_BACKBONES)}.")
    if params["quality"] and params["quality_backbone"] == "inception":
        from models.quality import check_inception_weights

        check_inception_weights()  # only a path check: the weights load after the cache lookup, before the run
    manifest, _ = load_manifest({**params, "dataset_run": ""})
    train_rows = real_only(manifest.split("train"))
    classes = list(manifest.classes)
    channels, size = native_format(manifest)
    image_format = "JPEG" if open_image(train_rows.local_paths()[0].read_bytes()).format == "JPEG" else "PNG"
    per_class = params["per_class"] or int(train_rows.frame["label"].value_counts().max())
    generator_options(params)  # before any run: an option the generator does not take is an error
    generator_run = _check_generator_run(params, classes) if kind in TRAINED else None
    prompts = {} if kind in TRAINED else _check_pipeline(params, classes)
    target = Target(manifest, train_rows, manifest.split("test"), classes, channels, size, image_format, per_class, prompts, generator_run, target_folder)
    logged = {**params, "generator_run": generator_run or "", "per_class": per_class, "classes": ",".join(classes)}
    translation = {"target_digest": target_folder.digest} if target_folder is not None else {}  # another target folder: another run
    key = cache_key("synthesize", logged, NOT_HASHED, train_digest=train_rows.digest, test_digest=target.test_rows.digest, **translation)
    return get_or_run(
        "synthesize", key, load=lambda: _load_sources(params, target), work=lambda run, source: _synthesize(run, params, target, source),
        run_name=run_name or f"synthesize-{kind}-{manifest.name}-s{params['seed']}", params=logged,
        tags={"synthmix.generator": kind, **({"synthmix.target_digest": target_folder.digest} if target_folder is not None else {}), **(tags or {})},
        nested=nested, reuse=reuse,
    )


def synthesize_once(params: dict, name: str, tags: dict, storage: str | None = None):
    """The synthesis a study or a sweep's workers share: run (or reuse) once; workers of one --storage
    wait for the first, under a lock in that storage, and reuse its run."""
    import contextlib

    from tracking.connect import storage_lock

    with storage_lock(storage, f"synthesize-{name}") if storage else contextlib.nullcontext():
        return synthesize(params, nested=True, reuse=True, run_name=f"{name}-synthesize-{params['generator']}", tags=tags)


@dataclass
class Target:
    """What the synthetic images must match and where they come from, resolved before any run exists."""

    manifest: object
    train_rows: object  # the real train split: the only images a generator learns from
    test_rows: object
    classes: list
    channels: int
    size: int
    image_format: str  # PNG or JPEG, as the real images
    per_class: int
    prompts: dict  # class -> prompt (Stable Diffusion)
    generator_run: str | None  # the synthesize run whose generator is sampled (a pointer followed)
    target_folder: object = None  # cyclegan: the target-domain images (a manifest of the --target-data folder)


def check_target_data(params: dict):
    """cyclegan's --target-data, scanned and checked (a manifest of its images), or None for the other generators."""
    from pathlib import Path

    from imaging.datasets import scan_flat_folder
    from imaging.errors import InputError

    folder = optional(params["target_data"])
    if params["generator"] != "cyclegan":
        if folder:
            raise InputError(f"--target-data applies to cyclegan, not {params['generator']}; leave it out or pass --generator cyclegan.")
        return None
    if optional(params["generator_run"]):
        if folder:
            raise InputError("--target-data is not used with --generator-run (that run's translator learnt its own target domain); leave one of them out.")
        return None
    if not folder:
        raise InputError("--generator cyclegan needs --target-data: a folder of unlabelled target-domain images (png/jpg), e.g. snowy photos.")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"--target-data {root} is not a folder; pass a folder of target-domain images (png/jpg, flat or in sub-folders).")
    try:
        manifest, _ = scan_flat_folder(root, skip_bad_images=params["skip_bad_images"], max_pixels=params["max_pixels"], name=f"{root.name}-target")
    except PermissionError as error:
        raise InputError(f"--target-data {root} cannot be read ({error.strerror}); give this user read access to it.") from error
    except InputError as error:
        raise InputError(f"--target-data: {error}") from error
    return manifest


def _target_images(target: Target):
    """The --target-data images as uint8 [N, C, H, W] in the real images' colour mode and size:
    centre-cropped to a square (never stretched), then resized (Lanczos)."""
    import numpy as np
    import torch
    from PIL import Image

    from imaging.images import open_image, to_array

    arrays = []
    for path in target.target_folder.local_paths():
        image = open_image(path.read_bytes())
        image = Image.fromarray(to_array(image, target.channels).squeeze(2) if target.channels == 1 else to_array(image, target.channels))
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        arrays.append(_to_real_format(image.crop((left, top, left + side, top + side)), target.channels, target.size))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _check_generator_run(params: dict, classes: list[str]) -> str | None:
    """--generator-run's id (a pointer followed), checked: it holds a generator trained on these classes."""
    from imaging.errors import InputError
    from tracking.runs import get_run, has_artifact

    if not optional(params["generator_run"]):
        return None
    run = get_run(params["generator_run"], "generator_run")
    if not has_artifact(run.info.run_id, "generator/generator.pt"):
        raise InputError(f"generator_run {run.info.run_id} has no generator/generator.pt; pass a synthesize run that trained a dcgan, vae, ddpm or cyclegan.")
    trained_classes = run.data.params.get("classes", "")
    if trained_classes and trained_classes != ",".join(classes):
        raise InputError(f"generator_run {run.info.run_id} was trained on classes {trained_classes.split(',')}, but the data has {classes}; use the same data.")
    return run.info.run_id


# stage option -> (generator kinds it applies to, the generator's hyperparameter); its "unset" value
GENERATOR_OPTIONS = {
    "epochs": (TRAINED, "epochs"), "batch_size": (TRAINED, "batch_size"), "lr": (TRAINED, "lr"),
    "base_channels": (("dcgan", "vae", "cyclegan"), "base_channels"), "latent_dim": (("dcgan", "vae"), "latent_dim"),
    "block_channels": (("ddpm",), "block_channels"), "upsample": (("dcgan", "cyclegan"), "upsample"),
    "conditioning": (("dcgan",), "conditioning"), "pixel_noise": (("dcgan",), "pixel_noise"),
    "diff_augment": (("dcgan", "cyclegan"), "augment"), "spectral_norm": (("dcgan",), "spectral_norm"), "ema_decay": (("dcgan", "ddpm"), "ema_decay"),
    "mode_seeking": (("dcgan",), "mode_seeking"), "spectral_loss": (("dcgan",), "spectral_loss"), "residual": (("cyclegan",), "residual"),
    "blocks": (("cyclegan",), "blocks"), "cycle_weight": (("cyclegan",), "cycle_weight"),
    "identity_weight": (("cyclegan",), "identity_weight"), "pool_size": (("cyclegan",), "pool_size"),
    "semantic_weight": (("cyclegan",), "semantic_weight"), "semantic_epochs": (("cyclegan",), "semantic_epochs"),
}


def generator_options(params: dict) -> dict:
    """The generator hyperparameters the options set (the others stay the kind's defaults for the image size);
    an option set for a kind it does not apply to is an error."""
    from imaging.errors import InputError
    from models.generators.augment import parse_policy

    kind, chosen = params["generator"], {}
    for name, (kinds, hyper) in GENERATOR_OPTIONS.items():
        value, unset = params[name], DEFAULTS[name]  # the stage's defaults mean "the generator's own"
        if value == unset and isinstance(value, bool) == isinstance(unset, bool):
            continue
        if kind not in kinds:
            raise InputError(f"--{name.replace('_', '-')} applies to {', '.join(kinds)}, not {kind}; leave it out or pick one of those generators.")
        if name == "block_channels":
            try:
                value = [int(part) for part in str(value).split(",")]
            except ValueError:
                value = []
            if len(value) < 2 or any(v < 8 or v % 8 for v in value):
                raise InputError(f"--block-channels {params[name]!r} must be two or more comma-separated multiples of 8, e.g. 16,32,64,64.")
        if name == "diff_augment":
            value = "" if value == "none" else value
            try:
                parse_policy(value)
            except ValueError as error:
                raise InputError(f"--diff-augment {params[name]!r}: {error}.") from error
        if name in ("mode_seeking", "spectral_loss"):
            try:
                value = float(value)
            except ValueError:
                value = -1.0
            if not (0 <= value < float("inf")):
                raise InputError(f"--{name.replace('_', '-')} {params[name]!r} must be a weight >= 0 (0 = off) or auto.")
        if name == "residual":  # auto is skipped above: the generator's default
            from models.generators.cyclegan import residual_hyper

            chosen.update(residual_hyper(value))
            continue
        chosen[hyper] = value
    if "semantic_epochs" in chosen and not chosen.get("semantic_weight"):
        raise InputError(f"--semantic-epochs {params['semantic_epochs']} trains the semantic loss's classifier, which only --semantic-weight above 0 uses; "
                         "set --semantic-weight too, or leave --semantic-epochs out.")
    return chosen


def _check_pipeline(params: dict, classes: list[str]) -> dict[str, str]:
    from imaging.errors import InputError

    if not optional(params["model_id"]):
        raise InputError(f"--generator {params['generator']} needs --model-id: a Stable Diffusion folder saved with save_pretrained, or a hub id.")
    return class_prompts(params, classes)


def _load_sources(params: dict, target: Target):
    """(generator, pipeline, device, backbone): _load_generator's three and the Inception backbone or None (the
    classifier backbone is trained inside the run)."""
    generator, pipe, device = _load_generator(params, target)
    if params["quality"] and params["quality_backbone"] == "inception":
        from models.quality import inception_backbone

        return generator, pipe, device, inception_backbone(device)
    return generator, pipe, device, None


def _load_generator(params: dict, target: Target):
    """(generator or None to train one, Stable Diffusion pipeline or None), loaded before any run exists."""
    import mlflow

    from imaging.errors import InputError
    from pipelines._cli import resolve_device

    device = resolve_device(params["device"])
    kind = params["generator"]
    if kind not in TRAINED:
        from models.generators.diffusion import load_img2img, load_text2img

        loader = load_text2img if kind == "stable-diffusion" else load_img2img
        return None, loader(params["model_id"], device, scheduler=optional(params["scheduler"])), device
    if not target.generator_run:
        return None, None, device
    from models.generators import load_generator

    generator = load_generator(mlflow.artifacts.download_artifacts(run_id=target.generator_run, artifact_path="generator/generator.pt"), device)
    if generator.kind != kind:
        raise InputError(f"generator_run {target.generator_run} holds a {generator.kind}, not a {kind}; pass --generator {generator.kind}.")
    return generator, None, device


def _synthesize(run, params: dict, target: Target, source):
    """Inside the run: sample (training the generator first where needed), write the images, log the dataset, samples and quality."""
    import tempfile
    from pathlib import Path

    import mlflow
    import pandas as pd
    import torch

    from imaging.manifest import Manifest
    from tracking.lineage import log_dataset

    generator, pipe, device, backbone = source
    log_dataset(target.train_rows, {"generator_train": target.train_rows}, artifact=False)
    labels = torch.arange(len(target.classes)).repeat_interleave(target.per_class)
    with tempfile.TemporaryDirectory() as folder:
        if params["generator"] == "cyclegan":
            generator = generator or _train_translator(params, target, device, Path(folder))
            arrays, rows, labels = _translate(params, target, generator)
        elif params["generator"] in TRAINED:
            generator = generator or _train_generator(params, target, device, Path(folder))
            arrays, rows = _sample_trained(params, target, generator, labels)
        else:
            arrays, rows = _sample_pipeline(params, target, pipe, labels)
        _write_images(Path(folder), run.info.run_id, target, arrays, rows, target.generator_run or run.info.run_id)
        mlflow.log_artifacts(str(Path(folder) / "images"), "images")
    synthetic = Manifest(pd.DataFrame(rows), target.manifest.root, f"{target.manifest.name}-{params['generator']}", target.classes)
    log_dataset(synthetic, {"synthetic": synthetic})
    _log_samples(params["generator"], target.classes, arrays, labels)
    if params["generator"] == "cyclegan":
        _log_before_after(target, rows, arrays)
    metrics = {"synth/images": len(rows), **(_quality(params, target, arrays, labels, device, backbone) if params["quality"] else {})}
    mlflow.log_metrics(metrics)
    summary = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "synth/images")
    print(f"[synthmix] wrote {len(rows)} synthetic images ({'translated, at most ' if params['generator'] == 'cyclegan' else ''}{target.per_class} per class)  {summary}", flush=True)
    return metrics, {"manifest": synthetic}


def _train_generator(params: dict, target: Target, device, folder):
    """Train a dcgan, vae or ddpm on the real train split; its curves, checkpoint and config are logged."""
    import time

    import mlflow

    from imaging.batches import cached_tensors
    from models.generators import train_generator

    images, image_labels = cached_tensors(target.train_rows, target.channels, target.size)
    options = generator_options(params)
    started = time.perf_counter()
    generator = train_generator(params["generator"], images, image_labels, len(target.classes), seed=params["seed"], device=device,
                                on_epoch=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch), **options)
    mlflow.log_metric("perf/train_seconds", time.perf_counter() - started)
    _log_checkpoint(generator, folder)
    return generator


def _log_checkpoint(generator, folder) -> None:
    """generator/generator.pt (what --generator-run loads) and generator/config.json."""
    import mlflow

    generator.save(folder / "generator.pt")
    mlflow.log_artifact(str(folder / "generator.pt"), "generator")
    mlflow.log_dict(generator.config, "generator/config.json")


def _train_translator(params: dict, target: Target, device, folder):
    """Train a CycleGAN from the real train split (all classes) to the --target-data images; curves, checkpoint and config logged."""
    import time

    import mlflow

    from imaging.batches import cached_tensors
    from models.generators import cyclegan
    from tracking.lineage import log_dataset

    log_dataset(target.target_folder, {"generator_target": target.target_folder}, artifact=False)
    images, labels = cached_tensors(target.train_rows, target.channels, target.size)
    hyper = {**cyclegan.defaults_for(target.size, target.size), **generator_options(params)}  # the options set, over the preset for the size
    started = time.perf_counter()
    generator = cyclegan.train(images, _target_images(target), hyper=hyper, seed=params["seed"], device=device, labels=labels,
                               on_epoch=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch))
    seconds = time.perf_counter() - started
    mlflow.log_metrics({"perf/train_seconds": seconds, "perf/train_imgs_per_s": hyper["epochs"] * len(images) / seconds})
    _log_checkpoint(generator, folder)
    return generator


def _translate(params: dict, target: Target, translator):
    """(arrays, manifest rows, label indices): the first --per-class real train images of each class, translated;
    row i records its source image and the seed image_seed(seed, i)."""
    import time

    import mlflow
    import numpy as np
    import torch

    from imaging.batches import cached_tensors
    from models.generators import image_seed

    images, labels = cached_tensors(target.train_rows, target.channels, target.size)
    frame = target.train_rows.frame.reset_index(drop=True)
    chosen = [index for label in target.classes for index in frame.index[frame["label"] == label][: target.per_class]]
    started = time.perf_counter()
    translated = translator.translate(images[chosen], progress=True)
    mlflow.log_metric("perf/imgs_per_s", len(chosen) / (time.perf_counter() - started))
    arrays = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in translated]
    rows = [{"label": frame["label"][index], "seed": image_seed(params["seed"], i), "generator": "cyclegan", "prompt": "", "source_image": frame["path"][index]}
            for i, index in enumerate(chosen)]
    return arrays, rows, torch.as_tensor(labels)[chosen]


def _log_before_after(target: Target, rows: list[dict], arrays: list) -> None:
    """samples/before_after.png: per class, a row of real source images above a row of their translations."""
    import numpy as np

    from imaging.images import decode
    from tracking.figures import class_rows_figure, log_figure

    sources = dict(zip(target.train_rows.frame["path"], target.train_rows.local_paths()))
    picture_rows, names = [], []
    for label in target.classes:
        picked = [i for i, row in enumerate(rows) if row["label"] == label][:8]
        if not picked:
            continue
        picture_rows += [np.stack([decode(sources[rows[i]["source_image"]].read_bytes(), target.channels, target.size) for i in picked]), np.stack([arrays[i] for i in picked])]
        names += [f"{label} (real)", f"{label} (translated)"]
    log_figure(class_rows_figure(picture_rows, names, "cyclegan: real train images (above) and their translations (below)"), "samples/before_after.png")


def _sample_trained(params: dict, target: Target, generator, labels):
    """(uint8 HWC arrays in the real format, manifest rows) sampled from a trained generator; image i's seed is recorded."""
    import time

    import mlflow
    import numpy as np
    from PIL import Image

    from models.generators import image_seed

    started = time.perf_counter()
    samples = generator.sample(labels, params["seed"], steps=params["steps"] or None, progress=True)
    mlflow.log_metric("perf/imgs_per_s", len(labels) / (time.perf_counter() - started))
    arrays = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in samples]
    if (samples.shape[1], samples.shape[2]) != (target.channels, target.size):
        arrays = [_to_real_format(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a), target.channels, target.size) for a in arrays]
    rows = [{"label": target.classes[label], "seed": image_seed(params["seed"], index), "generator": params["generator"], "prompt": "", "source_image": ""}
            for index, label in enumerate(labels.tolist())]
    return arrays, rows


def _sample_pipeline(params: dict, target: Target, pipe, labels):
    """(arrays, manifest rows) from Stable Diffusion (text-to-image, or img2img over the real train images)."""
    from models.generators.base import image_seed

    wanted = [target.classes[i] for i in labels.tolist()]
    seeds = [image_seed(params["seed"], i) for i in range(len(wanted))]
    sources, source_images = _img2img_sources(target, pipe, wanted) if params["generator"] == "img2img" else ([""] * len(wanted), None)
    results = _generate_with_retries(params, target, pipe, wanted, seeds, source_images)
    arrays = [_to_real_format(image, target.channels, target.size) for image in results]
    rows = [{"label": label, "seed": seeds[index], "generator": params["generator"], "prompt": target.prompts[label], "source_image": sources[index]}
            for index, label in enumerate(wanted)]
    return arrays, rows


def _img2img_sources(target: Target, pipe, wanted: list[str]):
    """(source path per output, source images at the pipeline's resolution): each class's real train images in turn."""
    from PIL import Image

    frame = target.train_rows.frame
    by_class = {label: group["path"].tolist() for label, group in frame.groupby("label")}
    paths = dict(zip(frame["path"], target.train_rows.local_paths()))
    order = {label: 0 for label in target.classes}
    sources = []
    for label in wanted:
        sources.append(by_class[label][order[label] % len(by_class[label])])
        order[label] += 1
    # the pipeline works at its own resolution; outputs come back to the real size later
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return sources, [Image.open(paths[path]).convert("RGB").resize((native, native), Image.Resampling.BICUBIC) for path in sources]


def _generate_with_retries(params: dict, target: Target, pipe, wanted: list[str], seeds: list[int], source_images) -> list:
    """The pipeline's images; one the safety checker blanked is dropped and tried again with a fresh seed (`seeds` is updated)."""
    import time

    import mlflow

    from models.generators.base import image_seed
    from models.generators.diffusion import generate_img2img, generate_text2img

    options = {"negative_prompt": optional(params["negative_prompt"]), "guidance_scale": params["guidance_scale"], "steps": params["steps"] or 25, "batch_size": params["sd_batch_size"]}
    started, dropped = time.perf_counter(), 0
    results: list = [None] * len(wanted)
    pending = list(range(len(wanted)))
    for attempt in range(MAX_SAFETY_RETRIES + 1):
        if not pending:
            break
        prompts = [target.prompts[wanted[i]] for i in pending]
        if params["generator"] == "stable-diffusion":
            made = generate_text2img(pipe, prompts, [seeds[i] for i in pending], **options)
        else:
            made = generate_img2img(pipe, [source_images[i] for i in pending], prompts, [seeds[i] for i in pending], strength=params["strength"], **options)
        still = []
        for index, (image, flagged) in zip(pending, made):
            if flagged:  # the safety checker blanked it: drop it, try a fresh seed
                dropped += 1
                seeds[index] = image_seed(params["seed"] + 7919 * (attempt + 1), index)
                still.append(index)
            else:
                results[index] = image
        pending = still
    if pending:
        raise RuntimeError(f"the safety checker blanked {len(pending)} images {MAX_SAFETY_RETRIES + 1} times each; change the prompt or the model")
    mlflow.log_metrics({"perf/imgs_per_s": len(wanted) / (time.perf_counter() - started), "synth/safety_dropped": dropped})
    return results


def _write_images(folder, run_id: str, target: Target, arrays: list, rows: list[dict], generator_run: str) -> None:
    """images/<class>/<index> in the real images' format; each row gets its path, source, run and sha256."""
    from imaging.images import suffix_for, write_as

    counters = {label: 0 for label in target.classes}
    for row, array in zip(rows, arrays):
        relative = f"images/{row['label']}/{counters[row['label']]:05d}{suffix_for(target.image_format)}"
        counters[row["label"]] += 1
        sha256 = write_as(folder, relative, array, target.image_format)
        row.update({"path": relative, "split": "train", "source": "synthetic", "run_id": run_id, "sha256": sha256, "generator_run": generator_run})


def _log_samples(kind: str, classes: list[str], arrays: list, labels) -> None:
    """samples/<class>.png (up to 32 each) and samples/all_classes.png (class rows); seeds are in the manifest."""
    import mlflow
    import numpy as np

    from tracking.figures import class_rows_figure, log_figure, montage

    stacked, index = np.stack(arrays), labels.numpy()
    for label_index, label in enumerate(classes):
        mlflow.log_image(montage(stacked[np.flatnonzero(index == label_index)[:32]], columns=8), f"samples/{label}.png")
    first = [stacked[np.flatnonzero(index == i)[:SAMPLES_PER_ROW]] for i in range(len(classes))]
    shown = max(len(row) for row in first)
    log_figure(class_rows_figure(first, classes, f"{kind}: the first {shown} synthetic images of each class"), "samples/all_classes.png")


def _quality(params: dict, target: Target, arrays: list, labels, device, backbone) -> dict:
    """synth/cas, synth/fid and synth/is (in `backbone`, or else the reference classifier), synth/detectability."""
    import numpy as np
    import torch

    from imaging.batches import cached_tensors
    from imaging.manifest import Manifest
    from models.quality import classification_accuracy_score, classifier_backbone, detectability, embed, fit_classifier, frechet_distance, inception_score

    synthetic = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    test_rows = Manifest(target.test_rows.frame, target.test_rows.root, target.test_rows.name, target.classes)
    test_images, test_labels = cached_tensors(test_rows, target.channels, target.size)
    real_images, real_labels = cached_tensors(target.train_rows, target.channels, target.size)
    epochs, seed, classes = params["quality_epochs"], params["seed"], len(target.classes)
    if backbone is None:  # --quality-backbone classifier: the reference is trained on the real train split, as CAS's test is real
        backbone = classifier_backbone(fit_classifier(real_images, real_labels, classes, epochs=epochs, seed=seed, device=device, desc="reference"), target.channels)
    real_features, _ = embed(backbone, test_images, device, desc="FID real")
    synthetic_features, probabilities = embed(backbone, synthetic, device, desc="FID, IS synthetic")
    score, spread = inception_score(probabilities)
    return {
        "synth/cas": classification_accuracy_score(synthetic, labels, test_images, test_labels, classes, epochs=epochs, seed=seed, device=device),
        "synth/fid": frechet_distance(real_features, synthetic_features),
        "synth/is": score,
        "synth/is_std": spread,
        "synth/detectability": detectability(real_images, synthetic, epochs=max(1, epochs // 2), seed=seed, device=device),
    }


command = stage_command("synthesize", __doc__, PARAMS, lambda **params: synthesize(params, reuse=True))
