"""The torch path of imaging.corruptions (`corrupt_torch(on_device=True)`, used by
`apply_augment`) against the NumPy path (`corrupt`), on CPU tensors: exact where the
arithmetic is the same, otherwise within the tolerance listed at DEVICE_KINDS."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imaging.corruptions import DEVICE_KINDS, AugmentSpec, apply_augment, corrupt, corrupt_torch
from tests.test_corruptions import mnist_digits, photos


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(0, 2, 3, 1).numpy()


def both(images: np.ndarray, kind: str, severity: int, seed: int = 3, **options) -> tuple[np.ndarray, np.ndarray]:
    """(NumPy path, torch path) on the same images."""
    host = corrupt(images, kind, severity, seed=seed, **options)
    device = nhwc(corrupt_torch(nchw(images), kind, severity, seed=seed, on_device=True, **options))
    return host.astype(np.int16), device.astype(np.int16)


def test_brightness_is_exact():
    images = photos()
    for severity in (1, 3, 5):
        host, device = both(images, "brightness", severity, table="imagenet")
        assert np.array_equal(host, device) and np.abs(host - images).mean() > 10 * severity
    grey = photos()[..., :1].copy()
    assert np.array_equal(*both(grey, "brightness", 2))


@pytest.mark.parametrize("kind", ["contrast", "defocus_blur"])
@pytest.mark.parametrize("size", [32, 224])
def test_contrast_and_defocus_agree_within_one_grey_level(kind, size):
    images = photos(4, size)
    for severity in (1, 3, 5):
        host, device = both(images, kind, severity)
        differ = np.abs(host - device)
        assert differ.max() <= 1 and differ.mean() < 0.01, (severity, differ.max(), differ.mean())
        assert np.abs(host - images).mean() > 0.5  # the corruption did something


def test_salt_pepper_replaces_exactly_the_level_share_of_pixels_half_black():
    images = np.full((64, 20, 20, 3), 128, np.uint8)
    for severity, level in ((1, 0.02), (3, 0.1), (5, 0.3)):
        _, device = both(images, "salt_pepper", severity)
        count = int(np.floor(level * 400 + 0.5))
        black, white = (device == 0).all(axis=3), (device == 255).all(axis=3)
        assert (black.sum(axis=(1, 2)) == count // 2).all() and ((black | white).sum(axis=(1, 2)) == count).all()
        assert ((device == 128).all(axis=3) | black | white).all()  # whole pixels, all channels
        # the replaced pixels spread over the image (uniform choice), not one corner
        share = (black | white).mean(axis=0)
        assert abs(share[:10].mean() - share[10:].mean()) < 0.25 * level


def test_noise_families_match_the_numpy_path_statistics():
    flat = np.full((16, 64, 64, 3), 100, np.uint8)
    images = photos(16, 64)
    for kind in ("gaussian_noise", "shot_noise"):
        for severity in (1, 3, 5):
            host, device = both(flat, kind, severity, table="imagenet")
            assert abs(device.std() / host.std() - 1) < 0.03, (kind, severity, device.std(), host.std())
            assert abs(device.mean() - host.mean()) < 0.03 * host.std()
            host, device = both(images, kind, severity, table="imagenet")
            mad_host, mad_device = np.abs(host - images).mean(), np.abs(device - images).mean()
            assert abs(mad_device / mad_host - 1) < 0.03, (kind, severity, mad_device, mad_host)
    for severity, level in ((1, 0.03), (5, 0.27)):
        host, device = both(flat, "impulse_noise", severity, table="imagenet")
        for value in (0, 255):
            assert abs((device == value).mean() - level / 2) < 0.005 and abs((device == value).mean() - (host == value).mean()) < 0.005


def test_blend_mixes_with_an_image_of_another_class_at_the_level_weight():
    images = photos()
    labels = np.arange(16) % 4
    _, device = both(images, "blend", 3, labels=labels)  # weight 0.3
    candidates = np.rint(0.7 * images[:, None].astype(np.float32) + 0.3 * images[None].astype(np.float32))  # [i, j]: i blended with j
    for i in range(16):
        matches = [j for j in range(16) if np.abs(candidates[i, j] - device[i]).max() <= 1]
        assert matches and all(labels[j] != labels[i] for j in matches), (i, matches)
    lone = nhwc(corrupt_torch(nchw(images[:1]), "blend", 5, seed=0, on_device=True))
    assert np.abs(lone.astype(int) - images[:1]).mean() > 5  # a batch of one still changes


def test_the_torch_path_is_seeded_and_the_seed_matters():
    tensor = nchw(photos())
    for kind in ("salt_pepper", "gaussian_noise", "shot_noise", "impulse_noise", "blend"):
        first = corrupt_torch(tensor, kind, 3, seed=11, on_device=True)
        assert torch.equal(first, corrupt_torch(tensor, kind, 3, seed=11, on_device=True))
        assert not torch.equal(first, corrupt_torch(tensor, kind, 3, seed=12, on_device=True))


def test_apply_augment_corrupts_on_the_device_path_and_the_host_path_on_request():
    images = torch.from_numpy(mnist_digits()[0]).unsqueeze(1)
    specs = [AugmentSpec("salt_pepper", 3, 1.0), AugmentSpec("gaussian_noise", 3, 1.0)]
    device = apply_augment(images, specs, generator_seed=5)
    host = apply_augment(images, specs, generator_seed=5, on_device=False)
    assert torch.equal(device, apply_augment(images, specs, generator_seed=5)) and not torch.equal(device, host)
    for out in (device, host):
        changed = (out != images).float().mean().item()
        assert 0.2 < changed < 0.95
    # the two paths distort about equally
    mad = [(out.float() - images.float()).abs().mean().item() for out in (device, host)]
    assert abs(mad[0] / mad[1] - 1) < 0.05, mad


def test_families_off_the_device_list_still_round_trip_exactly():
    images = photos()[:4]
    assert "snow" not in DEVICE_KINDS
    out = corrupt_torch(nchw(images), "snow", 2, seed=1, on_device=True)
    assert np.array_equal(nhwc(out), corrupt(images, "snow", 2, seed=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the CUDA path is checked where one is present")
def test_cuda_batches_stay_on_cuda():
    images = nchw(photos()).cuda()
    for kind in DEVICE_KINDS:
        out = corrupt_torch(images, kind, 3, seed=1, on_device=True, labels=torch.arange(16) % 4)
        assert out.is_cuda and out.dtype == torch.uint8 and out.shape == images.shape
    out = apply_augment(images, [AugmentSpec("salt_pepper", 3, 0.5), AugmentSpec("gaussian_noise", 3, 0.5)], generator_seed=0)
    assert out.is_cuda and (out != images).any()
    host, device = both(photos(), "brightness", 3)
    on_cuda = nhwc(corrupt_torch(images, "brightness", 3, seed=0, on_device=True).cpu()).astype(np.int16)
    assert np.abs(on_cuda - host).max() <= 1
