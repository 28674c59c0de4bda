"""The CUDA path: bf16 autocast where it is safe, tensors that stay on the GPU, no host
sync inside an epoch, and every trained generator on `device="cuda"`.

The tests marked `cuda` are skipped where torch sees no GPU (conftest); they run on a
GPU machine through `bash benchmarks/device_check.sh`. The others check, on the CPU,
the helpers the CUDA path goes through: autocast is a no-op there and the loops
compute exactly what a loop that reads its metrics after every batch computes.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from imaging.batches import TensorBatches, epoch_generator, to_device, to_model_input
from imaging.corruptions import OWN_LEVELS, AugmentSpec, apply_augment, corrupt_torch
from models.classifiers import build_classifier, normalisation
from models.device import autocast, autocast_enabled, module_device
from models.training import make_optimizer, predict, train_one_epoch


def blobs(count: int = 96, size: int = 16, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB [count, 3, size, size] whose class is the bright channel, plus noise: learnable in an epoch."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % classes
    images = torch.randint(0, 80, (count, 3, size, size), generator=generator, dtype=torch.uint8)
    images[torch.arange(count), labels % 3] += 150
    return images, labels


# ------------------------------------------------------------------ on the CPU


def test_autocast_is_a_no_op_on_the_cpu():
    assert not autocast_enabled("cpu")
    assert isinstance(autocast(torch.device("cpu")), contextlib.nullcontext)
    layer = nn.Linear(4, 2)
    with autocast("cpu"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32


def test_autocast_is_bf16_on_an_ampere_or_later_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # H100/H200
    assert autocast_enabled("cuda") and autocast_enabled(torch.device("cuda:0"))
    assert isinstance(autocast("cuda", enabled=False), contextlib.nullcontext)
    monkeypatch.setattr(torch.amp, "autocast", lambda **options: options)  # the real one initialises CUDA
    assert autocast("cuda") == {"device_type": "cuda", "dtype": torch.bfloat16}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4: bf16 only emulated
    assert not autocast_enabled("cuda")
    assert isinstance(autocast("cuda"), contextlib.nullcontext)


def test_module_device_and_to_device_on_the_cpu():
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(nn.ReLU()) == torch.device("cpu")
    tensor = torch.arange(5)
    assert to_device(tensor, "cpu") is tensor  # no copy on the CPU


def reference_epoch(network, batches, optimizer, mean, std, generator) -> dict[str, float]:
    """The loop as written before the no-sync accumulation: metrics read after every batch."""
    network.train()
    loss_sum = correct = seen = 0
    for images, labels in batches.iterate(generator):
        logits = network(to_model_input(images, mean, std, hflip=True, generator=generator))
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum().item())
        seen += len(labels)
    return {"loss": loss_sum / seen, "acc": correct / seen}


def test_the_epoch_without_host_syncs_computes_what_a_loop_with_them_computes():
    images, labels = blobs(count=64)
    mean, std = normalisation(3)
    results, weights = [], []
    for reference in (False, True):
        torch.manual_seed(0)
        network = build_classifier("smallcnn", 3, 3)
        optimizer = make_optimizer("adam", network.parameters(), 3e-3)
        batches = TensorBatches(images, labels, 32, torch.device("cpu"))
        if reference:
            metrics = [reference_epoch(network, batches, optimizer, mean, std, epoch_generator(0, epoch)) for epoch in range(2)]
        else:
            metrics = [train_one_epoch(network, batches, optimizer, mean, std, generator=epoch_generator(0, epoch), hflip=True) for epoch in range(2)]
        results.append([(m["loss"], m["acc"]) for m in metrics])
        weights.append(torch.cat([p.detach().flatten() for p in network.parameters()]))
    assert torch.equal(weights[0], weights[1])  # the same updates, bit for bit
    for (loss, acc), (loss_ref, acc_ref) in zip(*results):
        assert acc == acc_ref and loss == pytest.approx(loss_ref, rel=1e-12)
    assert results[0][1][0] < results[0][0][0]  # it learns


def test_predict_returns_float32_cpu_logits_in_batch_order():
    images, labels = blobs(count=70)
    mean, std = normalisation(3)
    torch.manual_seed(0)
    network = build_classifier("smallcnn", 3, 3).eval()
    logits, truth = predict(network, TensorBatches(images, labels, 32, torch.device("cpu")), mean, std)
    with torch.no_grad():
        expected = network(to_model_input(images, mean, std))
    assert logits.dtype == torch.float32 and logits.device.type == "cpu" and torch.equal(truth, labels)
    assert torch.allclose(logits, expected, atol=1e-5)


# ------------------------------------------------------------------ on a GPU


def mnist_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from imaging.batches import cached_tensors
    from imaging.datasets import load_dataset

    manifest, _ = load_dataset("mnist5k")
    return cached_tensors(manifest.split(split), 1, 28)


@pytest.mark.cuda
def test_smallcnn_learns_mnist5k_on_cuda_in_bf16():
    device = torch.device("cuda")
    assert autocast_enabled(device), f"{torch.cuda.get_device_name()} has no native bf16: the CUDA path runs float32 there"
    train_x, train_y = mnist_tensors("train")
    val_x, val_y = mnist_tensors("val")
    mean, std = normalisation(1)
    torch.manual_seed(0)
    network = build_classifier("smallcnn", 10, 1).to(device)
    optimizer = make_optimizer("adam", network.parameters(), 3e-3)
    batches = TensorBatches(train_x, train_y, 128, device)
    assert batches.images.is_cuda and batches.labels.is_cuda
    losses = [train_one_epoch(network, batches, optimizer, mean, std, generator=epoch_generator(0, epoch))["loss"] for epoch in range(3)]
    assert losses[2] < losses[1] < losses[0], losses
    logits, truth = predict(network, TensorBatches(val_x, val_y, 512, device), mean, std)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    accuracy = float((logits.argmax(1) == truth).float().mean())
    assert accuracy > 0.8, accuracy  # chance is 0.1
    full, _ = predict(network, TensorBatches(val_x, val_y, 512, device), mean, std, mixed_precision=False)
    assert float((full.argmax(1) == logits.argmax(1)).float().mean()) > 0.97  # bf16 rarely flips a prediction


@pytest.mark.cuda
def test_under_autocast_the_forward_pass_is_bf16_and_the_loss_float32():
    device = torch.device("cuda")
    network = build_classifier("smallcnn", 3, 3).to(device)
    images, labels = blobs()
    x = to_model_input(images.to(device), *normalisation(3))
    with autocast(device):
        logits = network(x)
        loss = nn.functional.cross_entropy(logits, labels.to(device))
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in network.parameters())


@pytest.mark.cuda
def test_batches_stay_on_cuda_through_flips_and_corruption():
    device = torch.device("cuda")
    images, labels = blobs()
    batches = TensorBatches(images, labels, 32, device)
    specs = [AugmentSpec("salt_pepper", 3, 0.5), AugmentSpec("blend", 2, 0.5), AugmentSpec("gaussian_noise", 2, 0.5)]
    generator = epoch_generator(0, 0)
    for batch, batch_labels in batches.iterate(generator):
        assert batch.is_cuda and batch_labels.is_cuda and batch.dtype == torch.uint8
        corrupted = apply_augment(batch, specs, generator_seed=1, labels=batch_labels)
        assert corrupted.is_cuda and corrupted.shape == batch.shape
        x = to_model_input(corrupted, *normalisation(3), hflip=True, generator=generator)
        assert x.is_cuda and x.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["brightness", "contrast", "defocus_blur", "blend"])
def test_on_device_corruption_on_cuda_matches_the_cpu(kind):
    images, labels = blobs(count=32, size=32)
    on_cpu = corrupt_torch(images, kind, 3, seed=4, labels=labels, on_device=True).numpy().astype(np.int16)
    on_gpu = corrupt_torch(images.cuda(), kind, 3, seed=4, labels=labels.cuda(), on_device=True)
    assert on_gpu.is_cuda and on_gpu.dtype == torch.uint8
    if kind == "blend":  # partners come from the device's own generator: check the rule, not the draw
        weight = OWN_LEVELS["blend"][2]
        out, source = on_gpu.cpu().float(), images.float()
        for i in range(len(images)):
            others = source[labels != labels[i]]
            mixes = ((1 - weight) * source[i] + weight * others).round()
            assert (mixes - out[i]).abs().flatten(1).max(1).values.min() <= 1  # a mix with some other-class image
    else:
        difference = np.abs(on_gpu.cpu().numpy().astype(np.int16) - on_cpu)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01


@pytest.mark.cuda
def test_an_epoch_waits_for_the_gpu_a_fixed_number_of_times_not_once_per_batch():
    """torch's sync debug mode warns at every host sync: 4 and 12 batches must warn equally often."""
    device = torch.device("cuda")
    mean, std = normalisation(3)
    specs = [AugmentSpec("salt_pepper", 3, 0.5), AugmentSpec("blend", 2, 0.5), AugmentSpec("gaussian_noise", 2, 0.5)]

    def augment(images, labels, generator):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))  # CPU generator: no sync
        return apply_augment(images, specs, generator_seed=seed, labels=labels)

    counts = []
    for count in (128, 384):
        images, labels = blobs(count=count)
        torch.manual_seed(0)
        network = build_classifier("smallcnn", 3, 3).to(device)
        optimizer = make_optimizer("adam", network.parameters(), 1e-3)
        batches = TensorBatches(images, labels, 32, device)
        train_one_epoch(network, batches, optimizer, mean, std, generator=epoch_generator(0, 0), hflip=True, augment=augment)  # warm-up
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(network, batches, optimizer, mean, std, generator=epoch_generator(0, 1), hflip=True, augment=augment)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], f"host syncs per epoch: {counts[0]} with 4 batches, {counts[1]} with 12"


def generator_kinds() -> list[str]:
    # cyclegan joins the list when models/generators has it
    return ["dcgan", "vae", "ddpm", "cyclegan"]


@pytest.mark.cuda
@pytest.mark.parametrize("kind", generator_kinds())
def test_each_trained_generator_trains_and_samples_on_cuda(kind):
    from imaging.photos import patches
    from models.generators import GENERATORS_TRAINED, train_generator

    if kind not in GENERATORS_TRAINED:
        pytest.skip(f"models.generators has no {kind} in this checkout")
    classes = ("cat", "coffee", "flower")
    images = torch.from_numpy(np.concatenate([patches(name, 24, 32, seed=index) for index, name in enumerate(classes)])).permute(0, 3, 1, 2).contiguous()
    labels = torch.arange(len(classes)).repeat_interleave(24)
    torch.cuda.reset_peak_memory_stats()
    generator = train_generator(kind, images, labels, len(classes), epochs=1, device="cuda", progress=False)
    assert torch.cuda.max_memory_allocated() > 0  # the training ran on the GPU
    wanted = torch.tensor([0, 1, 2, 2])
    samples = generator.sample(wanted, seed=0)
    assert samples.dtype == torch.uint8 and tuple(samples.shape) == (4, 3, 32, 32)
