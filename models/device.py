"""Mixed precision for the training and inference loops, decided in one place.

`autocast(device)` runs the forward pass in bfloat16 on a CUDA GPU that does
bf16 natively (compute capability 8.0 and up: A100, H100, H200, RTX 30xx on);
everywhere else it does nothing, so CPU results stay bit for bit what they were.

Why bf16 and not fp16: bf16 keeps float32's 8-bit exponent, so activations and
gradients neither overflow nor underflow and no GradScaler (loss scaling) is
needed; the loop is the same on every device. Under autocast, convolutions and
matrix products run in bf16 on the tensor cores, while the ops autocast lists
as float32 (softmax, log_softmax, cross_entropy, norms, sums, exp, pow) run in
float32, so losses and the metrics summed from them are float32. Weights,
optimiser state and backward's gradient accumulation stay float32 (`backward`
is called outside the context, as the autocast docs advise).

Where it is not used:
- the CPU: bf16 autocast is slower than float32 on most CPUs, and would change
  the numbers the tests and benchmarks rely on;
- GPUs before Ampere (capability < 8): bf16 is emulated there (slow); they run
  float32 rather than fp16 + GradScaler;
- the feature FID (`models.quality.features`): Fréchet distances come from
  covariances of the features, and bf16's 8-bit mantissa (about 0.4% per
  value) would add noise of the size of the differences between good
  generators; those forward passes stay float32 (`predict(mixed_precision=False)`; cuDNN still
  runs their convolutions in TF32, torch's default, with a 10-bit mantissa to bf16's 7);
- saliency maps (gradients with respect to the input image) run outside it.
"""
from __future__ import annotations

import contextlib

import torch

BF16_MIN_CAPABILITY = 8  # CUDA compute capability major version with native bf16 tensor cores (Ampere)


def autocast_enabled(device: torch.device | str) -> bool:
    """True where `autocast(device)` switches to bf16: a CUDA device of capability >= 8.0."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= BF16_MIN_CAPABILITY


def autocast(device: torch.device | str, enabled: bool = True):
    """A context that runs the forward pass in bf16 where `autocast_enabled(device)`, else a no-op."""
    if enabled and autocast_enabled(device):
        # torch.amp.autocast(device_type=...) is the same in torch 2.11 (the GPU image) and 2.14
        return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of `module`'s first parameter (or buffer); the CPU for a module without either."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait for the GPU's queued work (before reading a wall clock); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
