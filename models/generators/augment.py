"""Differentiable augmentation for GAN discriminators (DiffAugment, Zhao et al. 2020).

With a few hundred images per class, a discriminator memorises the real set
and the generator's gradients stop carrying information. Augmenting *both*
real and generated images, in every discriminator and generator step, with
transforms the gradient flows through keeps D from memorising without the
generator learning to draw the augmentations.

Policies, applied in this order to float images in [-1, 1] [N, C, H, W]:
- `color`: per image, brightness (+U(-0.5, 0.5)), saturation (x U(0, 2)
  around the pixel's channel mean) and contrast (x U(0.5, 1.5) around the
  image mean);
- `translation`: per image, a shift by up to 1/8 of each side, zeros shifted in;
- `cutout`: per image, one square of half the side set to 0.
"""
from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")


def parse_policy(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(POLICIES)} (comma-separated), or empty for none")
    return names


def _uniform(x: torch.Tensor, generator: torch.Generator | None, low: float, high: float) -> torch.Tensor:
    return torch.rand((len(x), 1, 1, 1), generator=generator, device=x.device, dtype=x.dtype) * (high - low) + low


def color(x: torch.Tensor, generator=None) -> torch.Tensor:
    x = x + _uniform(x, generator, -0.5, 0.5)
    if x.shape[1] > 1:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * _uniform(x, generator, 0.0, 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, generator, 0.5, 1.5) + mean


def translation(x: torch.Tensor, generator=None, fraction: float = 0.125) -> torch.Tensor:
    n, _, height, width = x.shape
    limit_y, limit_x = int(height * fraction + 0.5), int(width * fraction + 0.5)
    shift_y = torch.randint(-limit_y, limit_y + 1, (n, 1, 1), generator=generator, device=x.device)
    shift_x = torch.randint(-limit_x, limit_x + 1, (n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(height, device=x.device)[None, :, None] - shift_y  # source row of each output row
    cols = torch.arange(width, device=x.device)[None, None, :] - shift_x
    inside = ((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)).unsqueeze(1)
    index = (rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)).reshape(n, 1, -1).expand(-1, x.shape[1], -1)
    moved = torch.gather(x.reshape(n, x.shape[1], -1), 2, index).reshape_as(x)
    return moved * inside


def cutout(x: torch.Tensor, generator=None, fraction: float = 0.5) -> torch.Tensor:
    n, _, height, width = x.shape
    size_y, size_x = int(height * fraction + 0.5), int(width * fraction + 0.5)
    centre_y = torch.randint(0, height + (1 - size_y % 2), (n, 1, 1), generator=generator, device=x.device)
    centre_x = torch.randint(0, width + (1 - size_x % 2), (n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(height, device=x.device)[None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, :]
    hole = ((rows >= centre_y - size_y // 2) & (rows < centre_y - size_y // 2 + size_y)
            & (cols >= centre_x - size_x // 2) & (cols < centre_x - size_x // 2 + size_x))
    return x * (~hole).unsqueeze(1).to(x.dtype)


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """`x` augmented by each policy in `policy`, differentiably (see the module docstring)."""
    for name in POLICIES:
        if name in policy:
            x = {"color": color, "translation": translation, "cutout": cutout}[name](x, generator)
    return x
