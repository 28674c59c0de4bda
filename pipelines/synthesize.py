"""synthesize: write N class-labelled synthetic images per class, and score them.

    python -m pipelines synthesize --data mnist5k --generator vae --per-class 400
    python -m pipelines synthesize --data ./cars --generator stable-diffusion --model-id ./sd-folder \\
        --prompt "A photorealistic photograph of a {label}, natural lighting"
    python -m pipelines synthesize --data ./streets --generator img2img --model-id ./sd-folder --prompt "{label} in heavy snow"

Generators: `dcgan`, `vae`, `ddpm` are class-conditional models trained here on
the real *train* split only (their curves `gen/*` per epoch and the checkpoint
`generator/generator.pt` are logged; `--generator-run <id>` samples from that
run's generator without retraining). `stable-diffusion` is a pretrained
diffusers text-to-image pipeline, one prompt per class; `img2img` turns real
train images into new ones (each output records its source image).

Images are written as `images/<class>/<index>.png` (JPEG if the real images
are JPEG) at the real images' size and colour mode, with `dataset/manifest.csv`
recording each image's label, seed, prompt or source image and generator, a
sample grid per class under `samples/` (and all classes in `samples/all_classes.png`), perf/imgs_per_s for sampling, and
quality scores: synth/cas (classifier trained on synthetic only, accuracy on
the real test split), synth/fid (Fréchet distance in the features of a
classifier trained on the real train split, not Inception) and
synth/detectability (held-out accuracy of a real-vs-synthetic classifier;
0.5 = indistinguishable).
"""
from __future__ import annotations

import click

from pipelines._cli import DEVICE, data_params, defaults, option, optional, stage_command

GENERATORS = ("dcgan", "vae", "ddpm", "stable-diffusion", "img2img")
DEFAULT_PROMPT = "A photorealistic, highly detailed 8K photograph of a {label} in various settings and poses, natural lighting, sharp focus"
PARAMS = [
    *data_params(help_suffix=" Generators are trained on (and img2img starts from) its train split only."),
    option("generator", "vae", "dcgan, vae, ddpm: trained here on the real train split; stable-diffusion: pretrained text-to-image; img2img: pretrained image-to-image over the real train images.", click.Choice(GENERATORS)),
    option("per_class", 0, "Synthetic images per class; 0 = as many as the largest real train class.", click.IntRange(0)),
    option("generator_run", "", "Sample from the generator trained by this earlier synthesize run instead of training a new one."),
    option("epochs", 0, "Generator training epochs; 0 = the generator's default.", click.IntRange(0)),
    option("batch_size", 0, "Generator training batch size; 0 = the generator's default.", click.IntRange(0)),
    option("lr", 0.0, "Generator learning rate; 0 = the generator's default.", click.FloatRange(0)),
    option("steps", 0, "Sampling steps: ddpm's few-step sampler (1000 = full DDPM) or Stable Diffusion's inference steps; 0 = default (25 for Stable Diffusion).", click.IntRange(0)),
    option("model_id", "", "Stable Diffusion: a local folder saved with save_pretrained, or a hub id already in the local cache."),
    option("prompt", DEFAULT_PROMPT, "Prompt template; {label} becomes the class name."),
    option("prompt_file", "", "YAML or JSON file mapping class names to their own prompts (others use --prompt)."),
    option("negative_prompt", "", "What the images should not show (Stable Diffusion)."),
    option("guidance_scale", 7.5, "Classifier-free guidance scale (Stable Diffusion).", click.FloatRange(0)),
    option("scheduler", "", "Stable Diffusion sampler: ddim, dpm, euler, euler-ancestral, pndm, unipc; empty keeps the pipeline's own."),
    option("strength", 0.6, "img2img: how far from the source image to go (1 ignores it).", click.FloatRange(0, 1, min_open=True)),
    option("sd_batch_size", 4, "Images per Stable Diffusion call.", click.IntRange(1)),
    option("quality", True, "true: score the images (synth/cas, synth/fid, synth/detectability).", bool),
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
    from tracking.runs import get_or_run, get_run, has_artifact, quiet_mlflow

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    kind = params["generator"]
    if kind not in GENERATORS:
        raise InputError(f"--generator {kind!r} is not known; choose one of {', '.join(GENERATORS)}.")
    if params["per_class"] < 0 or params["epochs"] < 0 or params["steps"] < 0:
        raise InputError("--per-class, --epochs and --steps count things and must be 0 (the default) or more.")
    manifest, _ = load_manifest({**params, "dataset_run": ""})
    train_rows, test_rows = real_only(manifest.split("train")), manifest.split("test")
    classes = list(manifest.classes)
    channels, size = native_format(manifest)
    first = train_rows.local_paths()[0]
    image_format = "JPEG" if open_image(first.read_bytes()).format == "JPEG" else "PNG"
    per_class = params["per_class"] or int(train_rows.frame["label"].value_counts().max())

    trained_kind = kind in ("dcgan", "vae", "ddpm")
    if trained_kind and optional(params["generator_run"]):
        source_run = get_run(params["generator_run"], "generator_run")
        if not has_artifact(source_run.info.run_id, "generator/generator.pt"):
            raise InputError(f"generator_run {source_run.info.run_id} has no generator/generator.pt; pass a synthesize run that trained a dcgan, vae or ddpm.")
        trained_classes = source_run.data.params.get("classes", "")
        if trained_classes and trained_classes != ",".join(classes):
            raise InputError(f"generator_run {source_run.info.run_id} was trained on classes {trained_classes.split(',')}, but the data has {classes}; use the same data.")
    prompts = {}
    if not trained_kind:
        if not optional(params["model_id"]):
            raise InputError(f"--generator {kind} needs --model-id: a Stable Diffusion folder saved with save_pretrained, or a hub id.")
        prompts = class_prompts(params, classes)

    logged = {**params, "per_class": per_class, "classes": ",".join(classes)}
    key = {**{k: v for k, v in logged.items() if k not in NOT_HASHED}, "train_digest": train_rows.digest, "test_digest": test_rows.digest}
    name = run_name or f"synthesize-{kind}-{manifest.name}-s{params['seed']}"
    setup = dict(manifest=manifest, train_rows=train_rows, test_rows=test_rows, classes=classes, channels=channels, size=size,
                 image_format=image_format, per_class=per_class, prompts=prompts)
    return get_or_run(
        "synthesize", key, lambda: _prepare(params, **setup),
        run_name=name, params=logged, tags={"synthmix.generator": kind, **(tags or {})}, nested=nested, reuse=reuse,
    )


def _prepare(params: dict, *, manifest, train_rows, test_rows, classes, channels, size, image_format, per_class, prompts):
    """Load the generator or the Stable Diffusion pipeline (before any run exists); returns the
    sampling, writing and scoring that run inside the run."""
    import hashlib
    import io
    import tempfile
    import time
    from pathlib import Path

    import mlflow
    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    from imaging.batches import cached_tensors
    from imaging.errors import InputError
    from imaging.manifest import Manifest
    from pipelines._cli import resolve_device
    from tracking.figures import class_rows_figure, log_figure, montage
    from tracking.lineage import log_dataset

    kind = params["generator"]
    trained_kind = kind in ("dcgan", "vae", "ddpm")
    device = resolve_device(params["device"])
    generator = pipe = None
    if trained_kind and optional(params["generator_run"]):
        from models.generators import load_generator

        generator = load_generator(mlflow.artifacts.download_artifacts(run_id=params["generator_run"], artifact_path="generator/generator.pt"), device)
        if generator.kind != kind:
            raise InputError(f"generator_run {params['generator_run']} holds a {generator.kind}, not a {kind}; pass --generator {generator.kind}.")
    if not trained_kind:
        from models.generators.diffusion import load_img2img, load_text2img

        loader = load_text2img if kind == "stable-diffusion" else load_img2img
        pipe = loader(params["model_id"], device, scheduler=optional(params["scheduler"]))

    def inside(run):
        nonlocal generator
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            log_dataset(train_rows, {"generator_train": train_rows}, artifact=False)
            labels = torch.arange(len(classes)).repeat_interleave(per_class)
            rows = []
            if trained_kind:
                from models.generators import image_seed, train_generator

                if generator is None:
                    images, image_labels = cached_tensors(train_rows, channels, size)
                    options = {k: v for k, v in (("epochs", params["epochs"]), ("batch_size", params["batch_size"]), ("lr", params["lr"])) if v}
                    started = time.perf_counter()
                    generator = train_generator(kind, images, image_labels, len(classes), seed=params["seed"], device=device,
                                                on_epoch=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch), **options)
                    mlflow.log_metric("perf/train_seconds", time.perf_counter() - started)
                    generator.save(out / "generator.pt")
                    mlflow.log_artifact(str(out / "generator.pt"), "generator")
                    mlflow.log_dict(generator.config, "generator/config.json")
                started = time.perf_counter()
                steps = params["steps"] or None
                samples = generator.sample(labels, params["seed"], steps=steps, progress=True)
                mlflow.log_metric("perf/imgs_per_s", len(labels) / (time.perf_counter() - started))
                arrays = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in samples]
                if (samples.shape[1], samples.shape[2]) != (channels, size):
                    arrays = [_to_real_format(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a), channels, size) for a in arrays]
                for index, label in enumerate(labels.tolist()):
                    rows.append({"label": classes[label], "seed": image_seed(params["seed"], index), "generator": kind, "prompt": "", "source_image": ""})
            else:
                from models.generators.base import image_seed
                from models.generators.diffusion import generate_img2img, generate_text2img

                options = {"negative_prompt": optional(params["negative_prompt"]), "guidance_scale": params["guidance_scale"], "steps": params["steps"] or 25, "batch_size": params["sd_batch_size"]}
                wanted = [classes[i] for i in labels.tolist()]
                seeds = [image_seed(params["seed"], i) for i in range(len(wanted))]
                sources: list[str] = [""] * len(wanted)
                source_images = None
                if kind == "img2img":
                    by_class = {label: group for label, group in train_rows.frame.groupby("label")}
                    paths = dict(zip(train_rows.frame["path"], train_rows.local_paths()))
                    order = {label: 0 for label in classes}
                    for index, label in enumerate(wanted):
                        group = by_class[label]["path"].tolist()
                        sources[index] = group[order[label] % len(group)]  # cycle through the class's real images
                        order[label] += 1
                    # the pipeline works at its own resolution; outputs come back to the real size below
                    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
                    source_images = [Image.open(paths[path]).convert("RGB").resize((native, native), Image.Resampling.BICUBIC) for path in sources]
                started = time.perf_counter()
                dropped = 0
                results: list = [None] * len(wanted)
                pending = list(range(len(wanted)))
                for attempt in range(MAX_SAFETY_RETRIES + 1):
                    if not pending:
                        break
                    batch_prompts = [prompts[wanted[i]] for i in pending]
                    batch_seeds = [seeds[i] for i in pending]
                    if kind == "stable-diffusion":
                        made = generate_text2img(pipe, batch_prompts, batch_seeds, **options)
                    else:
                        made = generate_img2img(pipe, [source_images[i] for i in pending], batch_prompts, batch_seeds, strength=params["strength"], **options)
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
                arrays = [_to_real_format(image, channels, size) for image in results]
                for index, label in enumerate(wanted):
                    rows.append({"label": label, "seed": seeds[index], "generator": kind, "prompt": prompts[label], "source_image": sources[index]})

            # files in the real images' format, one folder per class
            counters = {label: 0 for label in classes}
            suffix = ".jpg" if image_format == "JPEG" else ".png"
            for row, array in zip(rows, arrays):
                relative = f"images/{row['label']}/{counters[row['label']]:05d}{suffix}"
                counters[row["label"]] += 1
                buffer = io.BytesIO()
                Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format=image_format, **({"quality": 95} if image_format == "JPEG" else {}))
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                (out / relative).write_bytes(buffer.getvalue())
                row.update({"path": relative, "split": "train", "source": "synthetic", "run_id": run.info.run_id, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), "generator_run": params["generator_run"] or run.info.run_id})
            mlflow.log_artifacts(str(out / "images"), "images")
            synthetic = Manifest(pd.DataFrame(rows), manifest.root, f"{manifest.name}-{kind}", classes)
            log_dataset(synthetic, {"synthetic": synthetic})
            stacked = np.stack(arrays)
            for label_index, label in enumerate(classes):
                chosen = np.flatnonzero(labels.numpy() == label_index)[:32]
                mlflow.log_image(montage(stacked[chosen], columns=8), f"samples/{label}.png")  # each image's seed is in the manifest
            first = [stacked[np.flatnonzero(labels.numpy() == i)[:SAMPLES_PER_ROW]] for i in range(len(classes))]
            log_figure(class_rows_figure(first, classes, f"{kind}: the first {SAMPLES_PER_ROW} synthetic images of each class"), "samples/all_classes.png")

            metrics = {"synth/images": len(rows)}
            if params["quality"]:
                from models.quality import classification_accuracy_score, detectability, features, fit_classifier, frechet_distance

                synthetic_images = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
                test_images, test_labels = cached_tensors(Manifest(test_rows.frame, test_rows.root, test_rows.name, classes), channels, size)
                real_images, real_labels = cached_tensors(train_rows, channels, size)
                epochs = params["quality_epochs"]
                metrics["synth/cas"] = classification_accuracy_score(synthetic_images, labels, test_images, test_labels, len(classes), epochs=epochs, seed=params["seed"], device=device)
                reference = fit_classifier(real_images, real_labels, len(classes), epochs=epochs, seed=params["seed"], device=device, desc="reference")
                metrics["synth/fid"] = frechet_distance(features(reference, test_images, device), features(reference, synthetic_images, device))
                metrics["synth/detectability"] = detectability(real_images, synthetic_images, epochs=max(1, epochs // 2), seed=params["seed"], device=device)
            mlflow.log_metrics(metrics)
            summary = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "synth/images")
            print(f"[synthmix] wrote {len(rows)} synthetic images ({per_class} per class)  {summary}", flush=True)
            return metrics, {"manifest": synthetic}

    return inside


command = stage_command("synthesize", __doc__, PARAMS, lambda **params: synthesize(params))
