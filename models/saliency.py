"""Saliency maps: which pixels a classifier's decision rests on.

One function, Captum style: a model, a normalised batch and the classes to
explain go in; a float32 batch of maps [N, H, W] at the images' size, each
scaled to [0, 1], comes out. The model is left as it was found: same
train/eval mode, no hooks, no `.grad` written, the caller's tensor untouched.

- `gradcam`: Grad-CAM (Selvaraju et al. 2017) on the last convolutional block,
  ReLU'd (only evidence *for* the class) and upsampled bilinearly. Coarse
  (layer4 of a ResNet is 1/32 of the image) but class-specific and cheap: one
  forward and one backward pass.
- `integrated_gradients`: Integrated Gradients (Sundararajan et al. 2017) from
  a black image, |attribution| summed over channels. Pixel-sharp but noisy;
  `steps` forward/backward passes per image.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from imaging.errors import InputError
from models.classifiers import last_conv_layer, normalisation

METHODS = ("gradcam", "integrated_gradients")

# Images explained per forward pass; also the forward-pass size inside
# Integrated Gradients, whose path steps multiply the batch.
BATCH_SIZE = 64


def saliency_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    method: str = "gradcam",
    layer: nn.Module | None = None,
    steps: int = 32,
    *,
    baseline: torch.Tensor | None = None,
    batch_size: int = BATCH_SIZE,
) -> torch.Tensor:
    """Maps [N, H, W] in [0, 1] explaining class `targets[i]` for normalised image `inputs[i]`.

    `layer` is where Grad-CAM looks (default: `last_conv_layer(model)`).
    `baseline` is where Integrated Gradients starts, in normalised units
    (default: black pixels under `normalisation(C)`, the project's input scaling).
    """
    if method not in METHODS:
        raise InputError(f"saliency method {method!r} is not known; choose one of {', '.join(METHODS)}.")
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be a normalised batch [N, C, H, W], got shape {tuple(inputs.shape)}")
    targets = torch.as_tensor(targets, dtype=torch.long, device=inputs.device).reshape(-1)
    if len(targets) != len(inputs):
        raise ValueError(f"got {len(inputs)} images but {len(targets)} targets")
    height, width = inputs.shape[-2:]
    if len(inputs) == 0:
        return torch.zeros(0, height, width, dtype=torch.float32, device=inputs.device)

    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    if method == "gradcam":
        explainer = LayerGradCam(model, layer if layer is not None else last_conv_layer(model, min(inputs.shape[-2:])))
    else:
        explainer = IntegratedGradients(model)
        if baseline is None:
            baseline = black_baseline(inputs.shape[1], device=inputs.device, dtype=inputs.dtype)
            baseline = baseline.expand(1, inputs.shape[1], height, width)

    was_training = model.training
    model.eval()  # batch norm on running statistics, no dropout: explain the model as it predicts
    maps = []
    try:
        # attributions need autograd even when the caller runs under no_grad / inference_mode
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, len(inputs), batch_size):
                # a fresh leaf: Captum may set requires_grad on what it is given
                chunk = inputs[start : start + batch_size].detach().clone()
                chunk_targets = targets[start : start + batch_size]
                if method == "gradcam":
                    coarse = explainer.attribute(chunk, target=chunk_targets, relu_attributions=True)
                    if start == 0 and coarse.shape[-2:].numel() == 1:
                        warnings.warn(
                            f"Grad-CAM's layer is 1x1 for {height}x{width} px images, so its maps are blank; "
                            "pass an earlier layer (e.g. model.layer3) or use larger images.",
                            stacklevel=2,
                        )
                    attribution = LayerAttribution.interpolate(coarse, (height, width), interpolate_mode="bilinear")
                    attribution = attribution.sum(dim=1)  # [n, 1, H, W] -> [n, H, W]
                else:
                    attribution = explainer.attribute(
                        chunk,
                        baselines=baseline,
                        target=chunk_targets,
                        n_steps=steps,
                        internal_batch_size=batch_size,
                    )
                    attribution = attribution.abs().sum(dim=1)
                maps.append(_scale_each_to_unit(attribution.detach().float()))
    finally:
        model.train(was_training)
    return torch.cat(maps)


def black_baseline(in_channels: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """An all-black image [1, C, 1, 1] in normalised units, (0 - mean) / std.

    Black rather than a zero tensor: zero in normalised units is the mean-grey
    image, which on dark-background data (MNIST digits) is itself a strong,
    unusual signal; black pixels are the "nothing there" of those images and
    the usual Integrated Gradients baseline for photographs too.
    """
    mean, std = normalisation(in_channels)
    mean_t = torch.tensor(mean, device=device, dtype=dtype)
    std_t = torch.tensor(std, device=device, dtype=dtype)
    return (-mean_t / std_t).reshape(1, in_channels, 1, 1)


def _scale_each_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map [N, H, W] to [0, 1]; a (near-)constant map becomes zeros."""
    # a diverged model can yield NaN/inf attributions; a blank map says "no usable evidence"
    flat = torch.nan_to_num(maps.flatten(1), nan=0.0, posinf=0.0, neginf=0.0)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    flat = flat - low
    # a span this small next to the values is rounding noise around a flat map (e.g. a
    # 1x1 Grad-CAM upsampled), not structure worth stretching to [0, 1]
    flat_enough = span <= 1e-5 * (span + low.abs())
    scaled = torch.where(flat_enough, torch.zeros_like(flat), flat / span.clamp_min(1e-30))
    return scaled.clamp_(0.0, 1.0).reshape(maps.shape)


def correct_and_incorrect(
    network: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    count: int,
    *,
    seed: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int,
    method: str = "gradcam",
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, maps [2*count or fewer, H, W]) of up to `count` correct and then up to `count` incorrect
    predictions on uint8 `images`, explaining the predicted class. The images are drawn by a seeded
    shuffle, so a panel shows many classes rather than the first few."""
    from imaging.batches import to_model_input

    device = device or next(network.parameters()).device
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    right = shuffled[(predictions == labels)[shuffled]][:count]
    wrong = shuffled[(predictions != labels)[shuffled]][:count]
    chosen = torch.cat([right, wrong])
    maps = saliency_maps(
        network, to_model_input(images[chosen].to(device), mean, std), predictions[chosen].to(device),
        method=method, layer=last_conv_layer(network, image_size),
    )
    return chosen, maps
