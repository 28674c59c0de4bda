"""Image classifiers: torchvision ResNets and a small CNN for tiny images.

`build_classifier` returns an `nn.Module` mapping a normalised float batch
[N, C, H, W] to logits [N, num_classes]. It adapts the first convolution to
any channel count and the head to any class count, so ImageNet weights load
into a 1-channel, 10-class ResNet18 as well as into a 3-channel one.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from imaging.errors import InputError

MODEL_NAMES = ("resnet18", "resnet50", "smallcnn")

# ImageNet statistics: used to normalise inputs whenever torchvision weights
# are involved; for 1-channel images the channel means are averaged.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: ~100k parameters, for images <= 64 px."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def normalisation(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std applied to [0, 1] pixels before the network."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean = sum(IMAGENET_MEAN) / 3
    std = sum(IMAGENET_STD) / 3
    return (mean,) * in_channels, (std,) * in_channels


def _torchvision_weights(name: str):
    from torchvision import models as tvm

    return {"resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1, "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V2}[name]


def pretrained_cache_path(name: str) -> Path:
    """Where torch keeps the ImageNet weights file for `name` (under $TORCH_HOME)."""
    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def offline() -> bool:
    return any(os.environ.get(var, "") not in ("", "0", "false") for var in ("SYNTHMIX_OFFLINE", "HF_HUB_OFFLINE"))


def load_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights for `name`: from the torch cache, else downloaded when online."""
    if name not in ("resnet18", "resnet50"):
        raise InputError(f"--pretrained has no ImageNet weights for model {name!r}; use resnet18 or resnet50, or drop --pretrained.")
    path = pretrained_cache_path(name)
    weights = _torchvision_weights(name)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    how = (
        f"download {weights.url} on a machine with internet and copy it to {path} "
        f"(or set TORCH_HOME to a folder holding checkpoints/{path.name}), or pass --weights FILE"
    )
    if offline():
        raise InputError(f"ImageNet weights for {name} are not in the torch cache and synthmix is offline; {how}.")
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=True)
    except Exception as error:  # no network, proxy, DNS: all the same to the user
        raise InputError(f"ImageNet weights for {name} are not cached and could not be downloaded ({error.__class__.__name__}); {how}.") from error


def _adapt_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fit a state dict to `model`: first-conv channels by averaging, mismatched heads dropped."""
    own = model.state_dict()
    adapted = {}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            adapted[key] = value
        elif value.ndim == 4 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            # conv over a different channel count: the mean over input channels keeps
            # the filter's response to a grey image the same
            mean = value.mean(dim=1, keepdim=True)
            adapted[key] = mean.repeat(1, target.shape[1], 1, 1) * (value.shape[1] / target.shape[1])
        # else: a classification head for another class count stays freshly initialised
    return adapted


def build_classifier(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
) -> nn.Module:
    """A classifier for `num_classes`, optionally initialised from ImageNet or a state-dict file."""
    if name not in MODEL_NAMES:
        raise InputError(f"--model {name!r} is not known; choose one of {', '.join(MODEL_NAMES)}.")
    if num_classes < 2:
        raise InputError(f"a classifier needs at least 2 classes, got {num_classes}.")
    if name == "smallcnn":
        model: nn.Module = SmallCNN(num_classes, in_channels)
    else:
        from torchvision import models as tvm

        model = getattr(tvm, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            old = model.conv1
            model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    if pretrained:
        model.load_state_dict(_adapt_state(load_pretrained_state(name), model), strict=False)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"--weights {path} is not a file; pass a state-dict saved with torch.save(model.state_dict(), path).")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise InputError(f"--weights {path} could not be read as a PyTorch state dict ({error}); save one with torch.save(model.state_dict(), path).") from error
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a synthmix checkpoint
        adapted = _adapt_state(state, model)
        if not adapted:
            raise InputError(f"--weights {path} has no tensor that fits a {name}; was it saved from another architecture?")
        model.load_state_dict(adapted, strict=False)
    return model


def last_conv_layer(model: nn.Module, image_size: int | None = None) -> nn.Module:
    """Where Grad-CAM looks: the deepest convolutional block whose map is still at least 4x4.

    ResNet's layer4 is 1/32 of the input: 7x7 at 224 px but 1x1 at 28 px, where its
    map says nothing about *where*; for small images an earlier block is used.
    """
    if hasattr(model, "layer4"):
        for layer, stride in (("layer4", 32), ("layer3", 16), ("layer2", 8)):
            if image_size is None or -(-image_size // stride) >= 4:  # ceil: 28 px gives layer2 4x4
                return getattr(model, layer)
        return model.layer1
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no convolution layer")
    return convs[-1]
