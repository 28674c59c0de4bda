"""The decoded-tensor cache and batch iteration."""
from __future__ import annotations

import numpy as np
import torch

from conftest import make_folder
from imaging.batches import LoaderBatches, TensorBatches, cached_tensors, epoch_generator, make_batches, to_model_input
from imaging.datasets import cache_dir, scan_folder
from imaging.images import decode


def test_tensor_cache_decodes_once_per_digest(tmp_path):
    manifest, _ = scan_folder(make_folder(tmp_path / "d", per_class=6, size=12))
    images, labels = cached_tensors(manifest, 1, 12)
    assert images.shape == (18, 1, 12, 12) and images.dtype == torch.uint8
    assert labels.tolist() == manifest.label_indices()
    first = decode(manifest.local_paths()[0].read_bytes())
    assert torch.equal(images[0, 0], torch.from_numpy(first[:, :, 0]))
    cache_file = cache_dir() / "tensors" / f"{manifest.digest}-1x12x12.pt"
    stamp = cache_file.stat().st_mtime_ns
    again, _ = cached_tensors(manifest, 1, 12)
    assert torch.equal(again, images) and cache_file.stat().st_mtime_ns == stamp
    rgb, _ = cached_tensors(manifest, 3, 8)
    assert rgb.shape == (18, 3, 8, 8)


def test_batches_cover_every_image_once_in_a_seeded_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    batches = TensorBatches(images, torch.arange(10), 4, torch.device("cpu"))
    order = [int(i) for x, _ in batches.iterate(epoch_generator(0, 0)) for i in x.flatten()]
    assert sorted(order) == list(range(10)) and len(batches) == 3
    assert order == [int(i) for x, _ in batches.iterate(epoch_generator(0, 0)) for i in x.flatten()]
    assert order != [int(i) for x, _ in batches.iterate(epoch_generator(0, 1)) for i in x.flatten()]
    assert [int(i) for x, _ in batches.iterate(None) for i in x.flatten()] == list(range(10))


def test_model_input_is_normalised_and_flipped_on_the_whole_batch():
    images = torch.zeros((64, 1, 2, 3), dtype=torch.uint8)
    images[:, :, :, 0] = 255
    x = to_model_input(images, (0.5,), (0.25,))
    assert torch.allclose(x[:, :, :, 0], torch.tensor(2.0)) and torch.allclose(x[:, :, :, 1], torch.tensor(-2.0))
    flipped = to_model_input(images, (0.5,), (0.25,), hflip=True, generator=torch.Generator().manual_seed(0))
    right_bright = (flipped[:, 0, 0, 2] > 0).sum().item()
    assert 10 < right_bright < 54  # about half the batch flipped
    assert torch.equal((flipped[:, 0, 0, 2] > 0), (flipped[:, 0, 0, 0] < 0))


def test_large_images_take_the_dataloader_path_with_the_same_pixels(tmp_path):
    manifest, _ = scan_folder(make_folder(tmp_path / "d", per_class=4, size=80), val_fraction=0.25, test_fraction=0.25)
    batches = make_batches(manifest, 1, 72, 5, torch.device("cpu"), workers=0)
    assert isinstance(batches, LoaderBatches)
    got = torch.cat([x for x, _ in batches.iterate(None)])
    expected = np.stack([decode(p.read_bytes(), 1, 72) for p in manifest.local_paths()])
    assert torch.equal(got.permute(0, 2, 3, 1), torch.from_numpy(expected))
