"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation from a source
domain (the real train images, all classes) to a target domain (a folder of
unlabelled images, e.g. snowy photos).

G: source -> target and F: target -> source are ResNet-block generators
(Johnson et al. 2016): c7s1-k, two stride-2 downsampling convs (2k, 4k),
`blocks` residual blocks at 4k, two upsampling transposed convs, c7s1-C, tanh;
InstanceNorm and ReLU, reflection padding. Two 70 x 70 PatchGAN discriminators
(C k, 2k, 4k, 8k; 4 x 4 convs, strides 2, 2, 2, 1; LeakyReLU 0.2; no norm on the
first). Least-squares GAN loss, cycle loss (L1) weight 10, identity loss (L1)
weight 5 (here 3: see below), a pool of the last 50 generated images for each discriminator, Adam
at 2e-4 with beta1 = 0.5, the learning rate constant for the first half of the
steps and decayed linearly to 0 over the second half. These are the paper's
settings; `blocks` follows it too (6 up to 128 px, 9 above). What is not the
paper's: the width `base_channels` (64 in the paper) and the epochs are small
presets by image size (`PRESETS`) so a few hundred images train on 2 CPU cores
in minutes, and batches of several images (the paper: 1).

`residual` (on by default; not the paper's): each generator outputs its input
plus a change, clip(x + its last conv, -1, 1), the last conv starting at 0, so it
starts as the identity and keeps the photo's detail and colour. The paper's
generator (`residual` False) draws the whole image through its InstanceNorm
bottleneck; after a CPU-sized training its translations were blurred and lost
colour, and on the 64 px winter benchmark (benchmarks/cyclegan.py) a class
classifier kept only 0.78 of its accuracy on them. A first residual form,
tanh(atanh(x) + change) (`residual_form` "tanh"), kept the class but learnt the
winter shift slowly (0.41 of the translations called "target"): a brightening
must be large before the tanh at bright pixels. README.md's CycleGAN section has
the measurements.

`identity_weight` 3 (the paper: 5). The identity loss asks G to leave target images
as they are; the paper uses it to keep colour composition, which the residual
generator keeps by construction. At 5 it also held G back from drawing snow's
streaks: at seed 0 of the 64 px snow benchmark only 0.44 of the translations were
called "target"; at 3, 0.925, with 0.99 of the class kept. Lower weights shift
further and keep less of the class; README.md's CycleGAN section has both seeds
and weights 2 to 5. With `residual` False, the paper's generator, pass the paper's
5 (`--identity-weight 5`) and the paper's cycle weight 10 (`--cycle-weight 10`).

`cycle_weight` 13 (the paper: 10). At 10, on the 64 px snow benchmark, the
translator drew snow more destructively than real snow at some seeds: at seed 1
a class classifier kept 0.55 of its accuracy on the translated "coffee" photos
(0.80 on the real snowy ones), 0.85 over all classes. At 13, on 1 thread, snow
seeds 0-4 and winter seeds 0-1 met every goal (seed 1: 0.975 of the class kept,
0.90 called snow); on 2 threads seed 1 kept 0.892 (0.867 at 10). A cycle must
map each translation back to its photo, so a change that wipes out detail costs
more. Higher weights lose the shift: at 15 seed 0 was called snow 0.77 of the
time, and at 20 the generators stayed the identity they start as.
README.md's CycleGAN section has the runs.

Two options that are not the paper's, off by default (README.md's CycleGAN section has their runs):
- `semantic_weight`: CyCADA's semantic consistency (Hoffman et al. 2018), its source-to-target half:
  a smallcnn trained on the source images and their labels first (`semantic_epochs`, its own seed),
  then frozen, scores G(x), and its cross-entropy against x's label is added to G's loss. It needs
  the labels (`train(..., labels=)`; the stage passes the real train split's).
- `augment`: DiffAugment (Zhao et al. 2020) of real and generated images before both discriminators,
  in their steps and in G's, as dcgan has; for a target folder of a few hundred images.

`translate(images_uint8)` -> uint8 [N, C, H, W] on the CPU (deterministic: no
noise). The checkpoint (`save`, `models.generators.load_generator`) holds both
generators and the config that rebuilds them; the discriminators are dropped.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.device import autocast
from models.generators.augment import diff_augment, parse_policy
from models.generators.base import crop_to, pad_to, preset_for, save_checkpoint, to_uint8, to_unit_range, train_loop

kind = "cyclegan"
DEFAULTS = dict(
    epochs=10,  # passes over the source images
    batch_size=8,  # the paper: 1 (InstanceNorm makes each image's statistics its own either way)
    lr=2e-4,  # Adam, both networks (the paper's)
    beta1=0.5,  # Adam's first-moment decay (the paper's)
    blocks=6,  # residual blocks: 6 up to 128 px, 9 above (the paper's); set by `defaults_for`
    base_channels=64,  # width of the first conv of G and D (the paper's 64); doubled per down-sampling
    cycle_weight=13.0,  # lambda of the L1 cycle loss (the paper's 10; 13 with the residual generator: see the docstring)
    identity_weight=3.0,  # weight of the L1 identity loss (the paper's 0.5 x lambda = 5; 3 with the residual generator: see the docstring)
    pool_size=50,  # generated images each discriminator is shown from the past (the paper's)
    upsample="transposed",  # G's two up-sampling layers: transposed (the paper's 3 x 3 stride-2) or resize (nearest x2 + 3 x 3 conv)
    residual=True,  # G outputs its input plus its last conv: a change to its input, the identity at the start (not the paper's; False = the paper's)
    residual_form="linear",  # with residual: linear = clip(input + change, -1, 1); tanh = tanh(atanh(input) + change), the first form
    semantic_weight=0.0,  # weight of the semantic loss (CyCADA, Hoffman et al. 2018): a source classifier's cross-entropy on G(x) against x's label; 0: off (the paper's)
    semantic_epochs=8,  # epochs of that classifier (a smallcnn trained on the source images first; counted in the training time)
    augment="",  # DiffAugment policies (Zhao et al. 2020) on real and generated images before each discriminator; empty: none (the paper's)
)
# by the image's longer side (the first preset at least as large); CPU budgets on 2 cores
PRESETS = {
    32: dict(base_channels=16, epochs=10, batch_size=8),
    64: dict(base_channels=16, epochs=10, batch_size=8),
    128: dict(base_channels=8, epochs=8, batch_size=4),
    256: dict(base_channels=8, epochs=8, batch_size=2),
}
PAPER_BLOCKS_UP_TO_128, PAPER_BLOCKS_ABOVE = 6, 9
CRITIC_MIN_SIDE = 32  # images below this are replicate-padded for the discriminators (their 4th layer needs a 2 x 2 map)


def defaults_for(height: int, width: int) -> dict:
    hyper = preset_for(DEFAULTS, PRESETS, height, width)
    hyper["blocks"] = PAPER_BLOCKS_UP_TO_128 if max(height, width) <= 128 else PAPER_BLOCKS_ABOVE
    return hyper


def lr_factor(step: int, total_steps: int) -> float:
    """The paper's schedule: 1 for the first half of training, then linearly to 0 at the last step."""
    half = total_steps / 2
    if step < half or total_steps <= 1:
        return 1.0
    return max(0.0, (total_steps - 1 - step) / max(total_steps - 1 - half, 1e-9))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x):
        return x + self.body(x)


def _up(in_channels: int, out_channels: int, mode: str) -> nn.Module:
    if mode == "transposed":
        return nn.ConvTranspose2d(in_channels, out_channels, 3, 2, 1, output_padding=1)
    if mode == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3))
    raise ValueError(f"unknown upsample {mode!r}; choose resize or transposed")


class ResidualOutput(nn.Module):
    """`body` (ending in a conv) read as a change to the input image x in [-1, 1]: linear, clip(x + body(x)),
    or tanh, tanh(atanh(x) + body(x)). Its last conv starts at 0 (`init_weights`), so G starts as the
    identity and keeps the input's detail from the first step; what it learns is the shift. In the tanh
    form a change to a bright pixel must be large before the tanh (x = 0.9 to 1: +2.3), so a shift that
    brightens was learnt slowly; the linear form moves every pixel alike and clips like a camera."""

    def __init__(self, body: nn.Sequential, form: str = "linear"):
        super().__init__()
        if form not in ("linear", "tanh"):
            raise ValueError(f"unknown residual form {form!r}; choose linear or tanh")
        self.body, self.form = body, form

    def start_as_identity(self) -> None:
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x):
        if self.form == "linear":
            return (x + self.body(x)).clamp(-1.0, 1.0)
        return torch.tanh(torch.atanh(x.clamp(-0.999, 0.999)) + self.body(x))


def resnet_generator(channels: int, width: int, blocks: int, upsample: str = "transposed", residual: bool = False, residual_form: str = "linear") -> nn.Module:
    """c7s1-w, d2w, d4w, R4w x blocks, u2w, uw, c7s1-C, tanh (Johnson et al.'s layout, as the paper's).
    `residual`: the last conv's output is a change to the input (`ResidualOutput`, in `residual_form`)."""
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, width, 7), nn.InstanceNorm2d(width), nn.ReLU(True)]
    for factor in (1, 2):
        layers += [nn.Conv2d(width * factor, width * factor * 2, 3, 2, 1), nn.InstanceNorm2d(width * factor * 2), nn.ReLU(True)]
    layers += [ResidualBlock(width * 4) for _ in range(blocks)]
    for factor in (4, 2):
        layers += [_up(width * factor, width * factor // 2, upsample), nn.InstanceNorm2d(width * factor // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7)]
    if residual:
        return ResidualOutput(nn.Sequential(*layers), residual_form)
    return nn.Sequential(*layers, nn.Tanh())


def patch_discriminator(channels: int, width: int) -> nn.Sequential:
    """The 70 x 70 PatchGAN: C w (no norm), C 2w, C 4w (stride 2), C 8w (stride 1), then a 1-channel map."""
    layers = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    previous = width
    for factor, stride in ((2, 2), (4, 2), (8, 1)):
        layers += [nn.Conv2d(previous, width * factor, 4, stride, 1), nn.InstanceNorm2d(width * factor), nn.LeakyReLU(0.2, True)]
        previous = width * factor
    layers += [nn.Conv2d(previous, 1, 4, 1, 1)]
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module) -> None:
    """The paper's code: convolution weights from N(0, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_weights(network: nn.Module) -> None:
    """The paper's initialisation (`_init_weights`); a residual generator's last conv at 0 (the identity)."""
    network.apply(_init_weights)
    for module in network.modules():
        if isinstance(module, ResidualOutput):
            module.start_as_identity()


class CycleGAN(nn.Module):
    """Both generators of a trained CycleGAN; `translate` maps source images into the target domain."""

    kind = kind

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.channels = int(config["image_channels"])
        self.height, self.width = int(config["image_height"]), int(config["image_width"])
        self.pad_h, self.pad_w = -(-self.height // 4) * 4, -(-self.width // 4) * 4  # two stride-2 stages
        shape = (self.channels, int(config["base_channels"]), int(config["blocks"]), config["upsample"], bool(config["residual"]), config["residual_form"])  # `build` fills the defaults
        self.source_to_target = resnet_generator(*shape)
        self.target_to_source = resnet_generator(*shape)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _run(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return crop_to(network(pad_to(x, self.pad_h, self.pad_w)), self.height, self.width)

    def to_target(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.source_to_target, x)

    def to_source(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.target_to_source, x)

    @torch.no_grad()
    def translate(self, images_uint8: torch.Tensor, batch_size: int = 64, progress: bool = False, to: str = "target") -> torch.Tensor:
        """uint8 [N, C, H, W] -> their translations, uint8 [N, C, H, W] on the CPU (`to="source"`: back)."""
        from tqdm.auto import tqdm

        if images_uint8.dtype != torch.uint8 or tuple(images_uint8.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(f"translate takes uint8 [N, {self.channels}, {self.height}, {self.width}], got {images_uint8.dtype} {tuple(images_uint8.shape)}")
        network = self.to_target if to == "target" else self.to_source
        was_training = self.training
        self.eval()
        out = torch.empty_like(images_uint8, device="cpu")
        try:
            for start in tqdm(range(0, len(images_uint8), batch_size), desc="translate cyclegan", unit="batch", disable=not progress, leave=False):
                batch = to_unit_range(images_uint8[start : start + batch_size].to(self.device))
                with autocast(self.device):
                    translated = network(pad_to(batch, self.pad_h, self.pad_w))
                out[start : start + len(batch)] = to_uint8(crop_to(translated.float(), self.height, self.width))
        finally:
            self.train(was_training)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """One file in the project's generator checkpoint format (`models.generators.load_generator`)."""
        return save_checkpoint(self, path)


RESIDUAL_CHOICES = ("on", "tanh", "off")  # the benchmark's --residual values; synthesize lists them in its click.Choice (with auto) so its CLI starts without torch


def residual_hyper(choice: str) -> dict:
    """The hyperparameters a --residual choice sets: on = the linear residual, tanh = the first form, off = the paper's generator."""
    if choice not in RESIDUAL_CHOICES:
        raise ValueError(f"unknown residual choice {choice!r}; choose {', '.join(RESIDUAL_CHOICES)}")
    return {"residual": choice != "off", "residual_form": "tanh" if choice == "tanh" else "linear"}


def build(config: dict) -> CycleGAN:
    # a checkpoint from before `residual` drew the whole image; one from before residual_form had only the tanh form
    return CycleGAN({**DEFAULTS, "residual": False, "residual_form": "tanh", **config})


class ImagePool:
    """Shrivastava et al.'s history of generated images, as the paper's: while not full, each new image is
    kept and shown; then each is, with probability 1/2, swapped for (and shown instead of) a random stored one.
    The draws come from a CPU generator; the images stay on their device."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator, self.images = size, generator, []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch
        shown = []
        for image in batch.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                shown.append(image)
            elif torch.rand((), generator=self.generator).item() < 0.5:
                slot = int(torch.randint(len(self.images), (), generator=self.generator))
                shown.append(self.images[slot])
                self.images[slot] = image
            else:
                shown.append(image)
        return torch.stack(shown)


def source_classifier(source_uint8: torch.Tensor, labels: torch.Tensor, *, epochs: int, seed: int, device) -> nn.Module:
    """The semantic loss's classifier: a smallcnn trained on the source images and their labels, frozen; it takes
    images in [-1, 1]. Trained with the global RNG forked, so the caller's draws are unchanged."""
    from models.classifiers import normalisation
    from models.quality import fit_classifier

    classes = int(labels.max()) + 1
    with torch.random.fork_rng(devices=[]):
        network = fit_classifier(source_uint8, labels, max(classes, 2), epochs=epochs, seed=seed, device=device, desc="semantic classifier")
    network.requires_grad_(False)
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in normalisation(source_uint8.shape[1]))
    return lambda images: network(((images + 1) / 2 - mean) / std)


def train(source_uint8: torch.Tensor, target_uint8: torch.Tensor, *, hyper: dict, seed: int, device, on_epoch=None, progress: bool = True,
          labels: torch.Tensor | None = None) -> CycleGAN:
    """A CycleGAN between two uint8 [N, C, H, W] image sets of one size and colour mode (`hyper`: `defaults_for`'s keys).
    `labels` (int [N], the source images' classes) are needed only for the semantic loss (`semantic_weight` > 0)."""
    if source_uint8.dtype != torch.uint8 or target_uint8.dtype != torch.uint8 or source_uint8.shape[1:] != target_uint8.shape[1:]:
        raise ValueError(f"source and target must be uint8 [N, C, H, W] of one shape, got {tuple(source_uint8.shape)} and {tuple(target_uint8.shape)}")
    if len(source_uint8) == 0 or len(target_uint8) == 0:
        raise ValueError("source and target need at least one image each")
    semantic_weight = float(hyper.get("semantic_weight", 0.0))
    if semantic_weight and (labels is None or len(labels) != len(source_uint8)):
        raise ValueError(f"semantic_weight {semantic_weight:g} needs one label per source image; pass labels=, or set semantic_weight to 0")
    device = torch.device(device)
    _, channels, height, width = source_uint8.shape
    config = {**hyper, "image_channels": channels, "image_height": height, "image_width": width}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(config)
        init_weights(model)
        discriminators = nn.ModuleDict({"target": patch_discriminator(channels, int(hyper["base_channels"])), "source": patch_discriminator(channels, int(hyper["base_channels"]))})
        discriminators.apply(_init_weights)
    model.to(device).train()
    discriminators.to(device).train()
    betas = (float(hyper["beta1"]), 0.999)
    optimizer_g = torch.optim.Adam(model.parameters(), lr=hyper["lr"], betas=betas)
    optimizer_d = torch.optim.Adam(discriminators.parameters(), lr=hyper["lr"], betas=betas)
    draws = torch.Generator().manual_seed(seed + 1)
    pools = {"target": ImagePool(int(hyper["pool_size"]), draws), "source": ImagePool(int(hyper["pool_size"]), draws)}
    batch_size = min(int(hyper["batch_size"]), len(source_uint8))
    steps_per_epoch = max(1, len(source_uint8) // batch_size)
    total_steps = int(hyper["epochs"]) * steps_per_epoch
    # the target batches: shuffled passes over the target set, drawn on the CPU and copied to the device once
    passes = -(-total_steps * batch_size // len(target_uint8)) + 1
    target_order = torch.cat([torch.randperm(len(target_uint8), generator=draws) for _ in range(passes)]).to(device)
    targets = target_uint8.to(device)
    cycle_weight, identity_weight = float(hyper["cycle_weight"]), float(hyper["identity_weight"])
    critic_h, critic_w = max(height, CRITIC_MIN_SIDE), max(width, CRITIC_MIN_SIDE)
    policy = parse_policy(hyper.get("augment", ""))
    augment_draws = torch.Generator(device).manual_seed(seed + 2)
    # its own seed: not the classifier a benchmark with this seed would judge label survival with
    classify = source_classifier(source_uint8, labels, epochs=int(hyper.get("semantic_epochs", 8)), seed=seed + 3, device=device) if semantic_weight else None
    step_index = 0

    def critic(domain: str, images: torch.Tensor) -> torch.Tensor:
        if policy:  # the same augmentations for real and generated images, in D's and G's steps
            images = diff_augment(images, policy, augment_draws)
        return discriminators[domain](pad_to(images, critic_h, critic_w))

    def least_squares(scores: torch.Tensor, real: bool) -> torch.Tensor:
        return F.mse_loss(scores.float(), torch.full_like(scores.float(), 1.0 if real else 0.0))

    def step(source, source_labels):
        nonlocal step_index
        target = to_unit_range(targets[target_order[step_index * batch_size : (step_index + 1) * batch_size]])
        factor = lr_factor(step_index, total_steps)
        for optimizer in (optimizer_g, optimizer_d):
            for group in optimizer.param_groups:
                group["lr"] = hyper["lr"] * factor
        discriminators.requires_grad_(False)
        with autocast(device):  # bf16 forward on a capable GPU; losses in float32 (models/device.py)
            fake_target, fake_source = model.to_target(source), model.to_source(target)
            loss_adversarial = least_squares(critic("target", fake_target), True) + least_squares(critic("source", fake_source), True)
            loss_cycle = F.l1_loss(model.to_source(fake_target).float(), source) + F.l1_loss(model.to_target(fake_source).float(), target)
            loss_identity = (F.l1_loss(model.to_target(target).float(), target) + F.l1_loss(model.to_source(source).float(), source)) if identity_weight else torch.zeros((), device=device)
            loss_semantic = F.cross_entropy(classify(fake_target).float(), source_labels) if classify else torch.zeros((), device=device)
            loss_g = loss_adversarial + cycle_weight * loss_cycle + identity_weight * loss_identity + semantic_weight * loss_semantic
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()
        discriminators.requires_grad_(True)
        losses_d = {}
        with autocast(device):
            for domain, real, fake in (("target", target, fake_target), ("source", source, fake_source)):
                losses_d[domain] = 0.5 * (least_squares(critic(domain, real), True) + least_squares(critic(domain, pools[domain](fake)), False))
        optimizer_d.zero_grad(set_to_none=True)
        (losses_d["target"] + losses_d["source"]).backward()
        optimizer_d.step()
        step_index += 1
        return {"gen/loss_g": loss_g.detach(), "gen/loss_adversarial": loss_adversarial.detach(), "gen/loss_cycle": loss_cycle.detach(),
                "gen/loss_identity": loss_identity.detach(), **({"gen/loss_semantic": loss_semantic.detach()} if classify else {}), "gen/loss_d_target": losses_d["target"].detach(), "gen/loss_d_source": losses_d["source"].detach(),
                "gen/lr": hyper["lr"] * factor}

    if labels is None or not semantic_weight:
        labels = torch.zeros(len(source_uint8), dtype=torch.long)  # unused: the translation itself is not class-conditional
    train_loop(step, source_uint8, labels.long(), epochs=int(hyper["epochs"]), batch_size=batch_size, seed=seed, device=device, on_epoch=on_epoch, progress=progress, description="train cyclegan")
    return model.eval()
