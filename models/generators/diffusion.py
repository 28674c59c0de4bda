"""Pretrained Stable Diffusion: text-to-image and image-to-image, one image per
(prompt, seed).

`model_id` is a local folder written by `save_pretrained` or a Hugging Face hub
id. A hub id is looked up in the local cache first; only when that misses and
neither HF_HUB_OFFLINE nor SYNTHMIX_OFFLINE is set does synthmix download it.

Each image gets its own CPU `torch.Generator(seed)`: the same seed gives the
same image whatever its batch, and the same starting noise on CPU and CUDA.
Outputs are RGB PIL images at the pipeline's resolution; the caller converts
them to the real images' size and colour mode.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from PIL import Image

from imaging.errors import InputError
from models.classifiers import offline

# --scheduler choices -> diffusers class names; None keeps the pipeline's own
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}

_HOW = "pass a local folder saved with save_pretrained, or run once online (unset HF_HUB_OFFLINE and SYNTHMIX_OFFLINE) to cache it"


def _looks_like_path(model_id: str) -> bool:
    # a hub id is "name" or "owner/name"; anything else is meant as a folder
    return model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1 or os.path.isabs(model_id)


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def _from_pretrained(model_id: str, dtype: torch.dtype):
    from diffusers import AutoPipelineForText2Image

    model_id = str(model_id)
    folder = Path(model_id).expanduser()
    if folder.exists() or _looks_like_path(model_id):
        if not folder.is_dir():
            raise InputError(f"model {model_id} is not a folder; pass a folder written by a diffusers pipeline's save_pretrained, or a hub id.")
        if not (folder / "model_index.json").is_file():
            raise InputError(f"model folder {folder} has no model_index.json, so it is not a diffusers pipeline; pass a folder written by save_pretrained.")
        try:
            return AutoPipelineForText2Image.from_pretrained(folder, dtype=dtype)
        except Exception as error:
            raise InputError(f"model folder {folder} could not be loaded as a text-to-image pipeline ({error.__class__.__name__}: {error}); pass a Stable Diffusion folder written by save_pretrained.") from error
    try:
        with warnings.catch_warnings():  # diffusers passes huggingface_hub an argument it deprecated
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return AutoPipelineForText2Image.from_pretrained(model_id, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as error:  # huggingface_hub's "not in the cache" errors are OSErrors
        cache_error = error
    if offline():
        raise InputError(f"model {model_id!r} is not in the local Hugging Face cache and synthmix is offline; {_HOW}.") from cache_error
    try:
        return AutoPipelineForText2Image.from_pretrained(model_id, dtype=dtype)
    except Exception as error:  # no network, unknown id, gated model: all the same to the user
        raise InputError(f"model {model_id!r} is not in the local Hugging Face cache and could not be downloaded ({error.__class__.__name__}); check the hub id, or {_HOW}.") from error


def _check_scheduler(scheduler: str | None) -> None:
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise InputError(f"--scheduler {scheduler!r} is not known; choose one of {', '.join(SCHEDULERS)}, or leave it out for the model's own.")


def _set_scheduler(pipe, scheduler: str | None) -> None:
    if scheduler is None:
        return
    import diffusers

    pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)


def load_text2img(model_id: str | os.PathLike, device: str | torch.device = "cpu", *, dtype: torch.dtype | None = None, scheduler: str | None = None):
    """A text-to-image pipeline on `device` (float16 on CUDA, float32 on CPU unless `dtype`)."""
    _check_scheduler(scheduler)
    device = torch.device(device)
    pipe = _from_pretrained(str(model_id), dtype or _default_dtype(device))
    _set_scheduler(pipe, scheduler)
    return pipe.to(device)


def load_img2img(model_id: str | os.PathLike, device: str | torch.device = "cpu", *, dtype: torch.dtype | None = None, scheduler: str | None = None):
    """An image-to-image pipeline sharing the text-to-image pipeline's components."""
    from diffusers import AutoPipelineForImage2Image

    return AutoPipelineForImage2Image.from_pipe(load_text2img(model_id, device, dtype=dtype, scheduler=scheduler))


def _check_lengths(prompts: list[str], seeds: list[int], images: list | None = None) -> None:
    if len(prompts) != len(seeds) or (images is not None and len(images) != len(seeds)):
        sizes = f"{len(prompts)} prompts, {len(seeds)} seeds" + ("" if images is None else f", {len(images)} images")
        raise ValueError(f"need one prompt and one seed per image, got {sizes}")


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def _results(output) -> list[tuple[Image.Image, bool]]:
    flags = getattr(output, "nsfw_content_detected", None) or [False] * len(output.images)
    return [(image, bool(flag)) for image, flag in zip(output.images, flags, strict=True)]


def generate_text2img(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    negative_prompt: str | None = None,
    guidance_scale: float = 7.5,
    steps: int = 25,
    batch_size: int = 4,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
) -> list[tuple[Image.Image, bool]]:
    """One (image, flagged by the safety checker) per (prompt, seed); a flagged image is black."""
    from tqdm.auto import tqdm

    _check_lengths(prompts, seeds)
    pipe.set_progress_bar_config(disable=True)
    results: list[tuple[Image.Image, bool]] = []
    with tqdm(total=len(prompts), desc="text2img", unit="img", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            batch_prompts = list(prompts[start : start + batch_size])
            output = pipe(
                prompt=batch_prompts,
                negative_prompt=None if negative_prompt is None else [negative_prompt] * len(batch_prompts),
                generator=_generators(seeds[start : start + batch_size]),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                output_type="pil",
            )
            results += _results(output)
            bar.update(len(batch_prompts))
    return results


def generate_img2img(
    pipe,
    images: list[Image.Image],
    prompts: list[str],
    seeds: list[int],
    *,
    strength: float = 0.6,
    negative_prompt: str | None = None,
    guidance_scale: float = 7.5,
    steps: int = 25,
    batch_size: int = 4,
    progress: bool = True,
) -> list[tuple[Image.Image, bool]]:
    """One (image, flagged) per (source image, prompt, seed).

    `strength` in (0, 1] is how far from the source image to go (1: ignore it);
    about strength * steps denoising steps run. Sources are converted to RGB;
    the output has the source's size rounded down to a multiple of 8.
    """
    from tqdm.auto import tqdm

    _check_lengths(prompts, seeds, images)
    if not 0 < strength <= 1:
        raise InputError(f"--strength {strength} must lie in (0, 1]; 0.6 keeps the layout of the source image.")
    pipe.set_progress_bar_config(disable=True)
    sources = [image.convert("RGB") for image in images]
    results: list[tuple[Image.Image, bool]] = []
    with tqdm(total=len(sources), desc="img2img", unit="img", disable=not progress) as bar:
        start = 0
        while start < len(sources):
            # one batch holds images of one size only: the pipeline stacks them
            stop = start + 1
            while stop < len(sources) and stop - start < batch_size and sources[stop].size == sources[start].size:
                stop += 1
            output = pipe(
                prompt=list(prompts[start:stop]),
                image=sources[start:stop],
                strength=strength,
                negative_prompt=None if negative_prompt is None else [negative_prompt] * (stop - start),
                generator=_generators(seeds[start:stop]),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                output_type="pil",
            )
            results += _results(output)
            bar.update(stop - start)
            start = stop
    return results
