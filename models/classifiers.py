"""Image classifiers: any torchvision classification model, and a small CNN for tiny images.

`build_classifier` returns an `nn.Module` mapping a normalised float batch
[N, C, H, W] to logits [N, num_classes]. ResNets get their first convolution
adapted to any channel count and their head to any class count, so ImageNet
weights load into a 1-channel, 10-class ResNet18 as well as into a 3-channel
one. Every other torchvision model (efficientnet_b0, vit_b_16, convnext_tiny,
...) is wrapped by `InputAdapter`: grey images are repeated to the 3 channels
it expects, and images smaller than it can take (a ViT needs exactly 224 px)
are resized inside the network, so the served model takes the dataset's own
images like any other.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from imaging.errors import InputError

OWN_MODELS = ("smallcnn",)
ADAPTED_CONV1 = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")  # first conv rebuilt for the channel count

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


def torchvision_names() -> list[str]:
    """The classification models torchvision builds by name (resnet18, efficientnet_b0, vit_b_16, ...)."""
    from torchvision import models as tvm

    return tvm.list_models(module=tvm)


def check_model_name(name: str) -> str:
    """`name` if it is smallcnn or a torchvision classification model; else an InputError with close matches."""
    if name in OWN_MODELS:
        return name
    known = torchvision_names()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(
            f"--model {name!r} is not a torchvision classification model; {hint}use smallcnn or any name of "
            f"torchvision.models.list_models(module=torchvision.models), e.g. resnet18, resnet50, efficientnet_b0, vit_b_16."
        )
    return name


def _torchvision_weights(name: str):
    """ImageNet weights torchvision recommends for `name` (DEFAULT): ResNet18 V1, ResNet50 V2, ..."""
    from torchvision import models as tvm

    try:
        return tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as error:
        raise InputError(f"--pretrained: torchvision has no ImageNet weights for {name!r}; drop --pretrained or pass --weights FILE.") from error


def pretrained_cache_path(name: str) -> Path:
    """Where torch keeps the ImageNet weights file for `name` (under $TORCH_HOME)."""
    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def offline() -> bool:
    return any(os.environ.get(var, "") not in ("", "0", "false") for var in ("SYNTHMIX_OFFLINE", "HF_HUB_OFFLINE"))


def load_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights for `name`: from the torch cache, else downloaded when online."""
    if name in OWN_MODELS:
        raise InputError(f"--pretrained has no ImageNet weights for model {name!r}; use a torchvision model such as resnet18, or drop --pretrained.")
    path = pretrained_cache_path(name)
    weights = _torchvision_weights(name)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    how = (
        f"download {weights.url} on a machine with internet and copy it to {path} "
        f"(or set TORCH_HOME to a folder holding hub/checkpoints/{path.name}), or pass --weights FILE"
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


class InputAdapter(nn.Module):
    """A torchvision model fed the dataset's own images: grey repeated to RGB, resized when the model needs it."""

    def __init__(self, network: nn.Module, resize_to: int | None):
        super().__init__()
        self.network = network
        self.resize_to = resize_to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize_to and x.shape[-1] != self.resize_to:
            x = nn.functional.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False, antialias=x.shape[-1] > self.resize_to)
        return self.network(x)


def _torchvision_network(name: str, num_classes: int) -> nn.Module:
    from torchvision import models as tvm

    extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}  # one output, not a tuple
    return tvm.get_model(name, weights=None, num_classes=num_classes, **extra)


def input_size(name: str, network: nn.Module, image_size: int | None) -> int | None:
    """None when `network` takes `image_size` px images as they are; else the side it needs
    (its ImageNet weights' crop size: 224 for a ViT, 299 for Inception v3)."""
    if not image_size:
        return None
    probe = torch.zeros(2, 3, image_size, image_size)
    training = network.training
    try:
        with torch.no_grad():
            network.eval()(probe)
        return None
    except Exception:  # too small for its pooling, or a fixed-size architecture (ViT, MaxViT)
        try:
            return int(_torchvision_weights(name).transforms().crop_size[0])
        except Exception:
            return 224
    finally:
        network.train(training)


def build_classifier(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """A classifier for `num_classes`, optionally initialised from ImageNet or a state-dict file.

    `image_size` (the dataset's side) lets a torchvision model that cannot take images that small
    resize them itself; the same arguments always build the same network.
    """
    check_model_name(name)
    if num_classes < 2:
        raise InputError(f"a classifier needs at least 2 classes, got {num_classes}.")
    if name == "smallcnn":
        model: nn.Module = SmallCNN(num_classes, in_channels)
        inner = model
    elif name in ADAPTED_CONV1:
        model = inner = _torchvision_network(name, num_classes)
        if in_channels != 3:
            old = model.conv1
            model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    else:
        if in_channels not in (1, 3):
            raise InputError(f"{name} takes 1- or 3-channel images, not {in_channels}; pass --channels 1 or 3.")
        inner = _torchvision_network(name, num_classes)
        model = InputAdapter(inner, input_size(name, inner, image_size))
    if pretrained:
        inner.load_state_dict(_adapt_state(load_pretrained_state(name), inner), strict=False)
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
        # a synthmix checkpoint of a wrapped model, or a plain torchvision state dict
        target = model if any(key in model.state_dict() for key in state) else inner
        adapted = _adapt_state(state, target)
        if not adapted:
            raise InputError(f"--weights {path} has no tensor that fits a {name}; was it saved from another architecture?")
        target.load_state_dict(adapted, strict=False)
    return model


def last_conv_layer(model: nn.Module, image_size: int | None = None) -> nn.Module:
    """Where Grad-CAM looks: the deepest convolutional block whose map is still at least 4x4.

    ResNet's layer4 is 1/32 of the input: 7x7 at 224 px but 1x1 at 28 px, where its
    map says nothing about *where*; for small images an earlier block is used.
    """
    if isinstance(model, InputAdapter):
        image_size = model.resize_to or image_size
        model = model.network
    if hasattr(model, "layer4"):
        for layer, stride in (("layer4", 32), ("layer3", 16), ("layer2", 8)):
            if image_size is None or -(-image_size // stride) >= 4:  # ceil: 28 px gives layer2 4x4
                return getattr(model, layer)
        return model.layer1
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no convolution layer")
    return convs[-1]
