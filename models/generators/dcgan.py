"""Class-conditional DCGAN (Radford et al. 2016), grown with the image.

G: [z, embed(label)] -> linear -> a 4..7 px map -> one up-sampling stage per
doubling of the side (`base.stage_layout`; BatchNorm, ReLU), with per-pixel
noise scaled per channel (learned from 0; Karras et al. 2019) added before the
last stage (`pixel_noise="half"`; "full": after it, "none") -> a 3 x 3 conv at
full resolution -> tanh, cropped to H x W. G's convs reflect at the borders
(zero padding drew a frame round every sample). Channels halve per stage from
`base_channels` x 2^(stages-1), capped at `max_channels`, to `base_channels`.
D mirrors it: image -> one stride-2 conv per halving (LeakyReLU 0.2; spectral
norm instead of BatchNorm) -> a minibatch standard deviation feature (Karras
et al. 2018) phi -> score w . phi + embed(label) . phi, the projection
discriminator (Miyato & Koyama 2018, `conditioning="projection"`): each class
has its own direction in D's feature space, so a fake must look like its
class, not merely real. `conditioning="input"` is the usual DCGAN way, one-hot
label maps beside the image (checkpoints from before the option rebuild so).
Non-saturating loss, Adam(0.5, 0.999), one D step per G step.

For the small folders users have (a few hundred images per class):
- DiffAugment (Zhao et al. 2020, `augment`): real and generated images are
  augmented the same differentiable way before D, so D cannot memorise the
  real set (`models.generators.augment`);
- spectral normalisation of D's convs (Miyato et al. 2018, `spectral_norm`):
  bounds D's slope, which keeps its gradients useful to G;
- an exponential moving average of G's weights (`ema_decay`) is what samples:
  it averages out the last steps' oscillation;
- a mode-seeking term in G's loss (Mao et al. 2019, `mode_seeking`): the fakes
  of a batch come in same-class pairs, and G pays 1 / (their distance / their
  z distance), on images average-pooled 4 x 4 so that pixel noise does not
  count as variety. Without it the 64 px preset's within-class diversity was
  0.55-0.76 of the real images' from run to run; with 0.1, about 1;
- a spectral term in G's loss (after Durall et al. 2020, `spectral_loss`): the
  mean |log| ratio of the fake and real batches' shares of spectral energy in
  8 radial frequency bands. Without it one 64 px seed in four, and the 32 px
  preset, drew samples smoother than the photos (0.48 of their top-band
  energy in one channel), and a dither was a pixel-noise setting away.

Up-sampling: `resize` (nearest x2 then a 3 x 3 conv, Odena et al. 2016) by
default; `transposed` (the paper's 4 x 4 stride-2 transposed conv) leaves
a checkerboard / colour dither in the top frequencies (imaging/artefacts.py
measures it; benchmarks/synthesis.py prints it).

Defaults are picked by image size (`PRESETS`, by the longer side); measured
by `benchmarks/synthesis.py`.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from models.device import autocast
from models.generators.augment import diff_augment, parse_policy
from models.generators.base import TrainedGenerator, crop_to, ema_decay_at, pad_to, per_image_noise, preset_for, seeded_model, stage_layout, train_loop
from models.generators.spectral import spectral_term

DEFAULTS = dict(
    epochs=30,  # passes over the train split
    batch_size=64,
    lr=2e-4,  # Adam, both networks (the DCGAN paper's)
    base_channels=32,  # channels of G's last hidden stage and D's first conv; doubled per stage
    max_channels=256,  # cap on any stage's channels
    latent_dim=64,  # z
    embed_dim=32,  # label embedding concatenated to z
    upsample="resize",  # resize (nearest x2 + 3x3 conv) or transposed (4x4 stride-2 transposed conv)
    spectral_norm=True,  # spectral normalisation of D's convs and score
    augment="color,translation,cutout",  # DiffAugment policies applied before D; empty: none
    ema_decay=0.999,  # G weight average that samples; 0: the last weights
    conditioning="projection",  # how D sees the label: projection (Miyato & Koyama 2018) or input (one-hot maps beside the image)
    mode_seeking=0.1,  # weight of the mode-seeking term (Mao et al. 2019): 1 / (image distance / z distance) of same-class pairs, pooled 4 x 4; 0: off
    pixel_noise="half",  # where G adds its per-pixel noise: half (before the last up-sampling stage), full (at the output's resolution) or none
    spectral_loss=0.3,  # weight of the spectral term (after Durall et al. 2020): |log| ratio of the fake and real batches' radial power-spectrum shares; 0: off
)
# by the image's longer side (the first preset at least as large); CPU budgets on 2 cores
PRESETS = {
    32: dict(epochs=30, batch_size=64, base_channels=32),
    64: dict(epochs=100, batch_size=32, base_channels=16),
    128: dict(epochs=60, batch_size=32, base_channels=8),
}


PIXEL_NOISE = ("half", "full", "none")


def defaults_for(height: int, width: int) -> dict:
    return preset_for(DEFAULTS, PRESETS, height, width)


def _up(in_channels: int, out_channels: int, mode: str) -> list[nn.Module]:
    if mode == "transposed":
        return [nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1)]
    if mode == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, out_channels, 3, 1, 1, padding_mode="reflect")]
    raise ValueError(f"unknown upsample {mode!r}; choose resize or transposed")


class NoiseInjection(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.strength * noise.to(x.dtype)


class Discriminator(nn.Module):
    """`conditioning` "projection" (Miyato & Koyama 2018): the score is w . phi(x) + embed(y) . phi(x), so
    every class has its own direction in D's feature space and a fake is judged as an image *of its class*;
    "input": one-hot label maps concatenated to the image (the usual DCGAN conditioning, weaker: a sample
    can pass with another class's colours)."""

    def __init__(self, channels: int, num_classes: int, widths: list[int], base_pixels: int, normalise: bool, conditioning: str = "projection"):
        super().__init__()
        if conditioning not in ("projection", "input"):
            raise ValueError(f"unknown conditioning {conditioning!r}; choose projection or input")
        self.num_classes, self.conditioning = num_classes, conditioning
        wrap = nn.utils.spectral_norm if normalise else (lambda module: module)
        layers, previous = [], channels + (num_classes if conditioning == "input" else 0)
        for width in widths:
            layers += [wrap(nn.Conv2d(previous, width, 4, 2, 1)), nn.LeakyReLU(0.2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.score = wrap(nn.Linear((previous + 1) * base_pixels, 1))
        # the projection acts on the sum-pooled features (as in Miyato & Koyama's ResNet critics): a class is a
        # direction in what D sees anywhere in the image, not a per-position template
        self.project = wrap(nn.Embedding(num_classes, previous)) if conditioning == "projection" else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.conditioning == "input":
            x = torch.cat([x, F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])], 1)
        h = self.features(x)
        # minibatch standard deviation: lets D see a batch that lacks variety
        spread = h.std(dim=0, keepdim=True).mean(dim=1, keepdim=True).expand(len(h), 1, *h.shape[-2:])
        phi = torch.cat([h, spread], 1).flatten(1)
        score = self.score(phi).squeeze(1)
        if self.project is not None:
            score = score + (self.project(labels).to(h.dtype) * h.sum((2, 3))).sum(1)
        return score


class DCGAN(TrainedGenerator):
    kind = "dcgan"

    def __init__(self, config: dict):
        super().__init__(config)
        stages, self.base_h, self.base_w = stage_layout(self.height, self.width)
        self.pad_h, self.pad_w = self.base_h * 2**stages, self.base_w * 2**stages
        widths = [min(config["max_channels"], config["base_channels"] * 2**i) for i in range(stages)]  # D's, shallow to deep
        top = widths[-1]
        self.label_embed = nn.Embedding(self.num_classes, config["embed_dim"])
        self.project = nn.Sequential(nn.Linear(config["latent_dim"] + config["embed_dim"], top * self.base_h * self.base_w), nn.BatchNorm1d(top * self.base_h * self.base_w), nn.ReLU())
        layers, previous, stage_channels = [], top, [top, *reversed(widths[:-1]), widths[0]]  # after 0, 1, .. stages
        for width in stage_channels[1:]:
            layers += [*_up(previous, width, config["upsample"]), nn.BatchNorm2d(width), nn.ReLU()]
            previous = width
        self.generator = nn.Sequential(*layers)
        # per-pixel noise, scaled per channel (learned, from 0; Karras et al. 2019): fine texture the z vector cannot
        # place pixel by pixel. "full" adds it at the output's resolution, where nothing after it but one 3 x 3 conv
        # can shape it: on one 64 px seed out of three it became a dither with 1.9-2.8x the real images' top-band
        # energy. "half" adds it before the last up-sampling stage, whose nearest x2 + conv smooths it
        mode = config["pixel_noise"]
        if mode not in PIXEL_NOISE:
            raise ValueError(f"unknown pixel_noise {mode!r}; choose {', '.join(PIXEL_NOISE)}")
        after = 1 if mode == "half" else 0  # up-sampling stages after the noise
        self.noise_at = len(layers) - after * (len(layers) // stages)  # the generator's layers before it
        self.noise_shape = (1, self.pad_h // 2**after, self.pad_w // 2**after)
        self.noise = None if mode == "none" else NoiseInjection(stage_channels[stages - after])
        # then a 3 x 3 conv at full resolution: without it, resize-conv's output holds no detail finer than the
        # previous stage's (2 x 2 blocks, smoothed)
        self.to_image = nn.Sequential(nn.Conv2d(previous, self.channels, 3, 1, 1, padding_mode="reflect"), nn.Tanh())
        self.discriminator = Discriminator(self.channels, self.num_classes, widths, self.base_h * self.base_w, bool(config["spectral_norm"]), config["conditioning"])

    def generate(self, z: torch.Tensor, labels: torch.Tensor, pixel_noise: torch.Tensor) -> torch.Tensor:
        """Images from z [N, latent_dim] and pixel_noise [N, *noise_shape] (standard normal; ignored without pixel noise)."""
        h = self.project(torch.cat([z, self.label_embed(labels)], dim=1)).view(len(z), -1, self.base_h, self.base_w)
        h = self.generator[: self.noise_at](h)
        if self.noise is not None:
            h = self.noise(h, pixel_noise)
        return crop_to(self.to_image(self.generator[self.noise_at :](h)), self.height, self.width)

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.discriminator(pad_to(images, self.pad_h, self.pad_w), labels)

    def generator_modules(self) -> list[nn.Module]:
        return [m for m in (self.label_embed, self.project, self.generator, self.noise, self.to_image) if m is not None]

    def sample_batch(self, labels, generators, steps=None):
        z = per_image_noise(generators, (self.config["latent_dim"],), self.device)  # each image's generator: z, then its pixel noise
        return self.generate(z, labels, per_image_noise(generators, self.noise_shape, self.device))


def build(config: dict) -> DCGAN:
    # a checkpoint from before the projection discriminator has no "conditioning": its D took the labels as input maps
    # one from before pixel_noise added it at full resolution; one from before spectral_loss trained without it
    return DCGAN({**DEFAULTS, "conditioning": "input", "pixel_noise": "full", "spectral_loss": 0.0, **config})


def _average_into(average: list[nn.Module], current: list[nn.Module], decay: float) -> None:
    with torch.no_grad():
        for target, source in zip(average, current, strict=True):
            for averaged, value in zip(target.parameters(), source.parameters(), strict=True):
                averaged.lerp_(value, 1 - decay)
            for averaged, value in zip(target.buffers(), source.buffers(), strict=True):
                averaged.copy_(value)  # BatchNorm statistics: the current ones


POOL = 4  # the mode-seeking term compares images at 1/4 of the side


def mode_seeking_term(fake_a: torch.Tensor, fake_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mao et al. 2019 (MSGAN): 1 / (mean |G(z_a) - G(z_b)| / mean |z_a - z_b|) over the pairs; small when
    different z give different images of a class, large when G draws one image for every z (mode collapse).
    The images are compared after a 4 x 4 average pool: the term rewards different layouts and colours,
    not different pixel noise (which it would otherwise buy with a checkerboard of high frequencies)."""
    pool = min(POOL, fake_a.shape[-1], fake_a.shape[-2])
    a, b = F.avg_pool2d(fake_a.float(), pool), F.avg_pool2d(fake_b.float(), pool)
    ratio = (a - b).abs().mean() / (z_a - z_b).abs().mean()
    return 1.0 / (ratio + eps)


def train(images_uint8, labels, num_classes, *, hyper, seed, device, on_epoch, progress) -> DCGAN:
    policy = parse_policy(hyper["augment"])
    model = seeded_model(DCGAN, images_uint8, num_classes, hyper, seed=seed, device=device)
    betas = (0.5, 0.999)
    optimizer_g = torch.optim.Adam([p for m in model.generator_modules() for p in m.parameters()], lr=hyper["lr"], betas=betas)
    optimizer_d = torch.optim.Adam(model.discriminator.parameters(), lr=hyper["lr"], betas=betas)
    average = copy.deepcopy(model.generator_modules()) if hyper["ema_decay"] > 0 else None
    noise = torch.Generator(device).manual_seed(seed + 1)
    steps_done = 0

    def augmented(x):
        return diff_augment(x, policy, noise) if policy else x

    def step(real, y):
        nonlocal steps_done
        half = len(real) // 2
        if hyper["mode_seeking"] and half:  # the fakes come in same-class pairs (i, i + half) for the mode-seeking term
            y = torch.cat([y[:half], y[:half], y[2 * half :]])
        z = torch.randn((len(real), hyper["latent_dim"]), generator=noise, device=device)
        pixel_noise = torch.randn((len(real), *model.noise_shape), generator=noise, device=device)
        with autocast(device):  # bf16 forward on a capable GPU; backward outside, float32 weights (models/device.py)
            fake = model.generate(z, y, pixel_noise)
            # non-saturating GAN loss: softplus(-s) = -log sigmoid(s) on real, softplus(s) on fake
            loss_d = F.softplus(-model.discriminate(augmented(real), y).float()).mean() + F.softplus(model.discriminate(augmented(fake.detach()), y).float()).mean()
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()
        with autocast(device):
            loss_g = F.softplus(-model.discriminate(augmented(fake), y).float()).mean()
            if hyper["mode_seeking"] and half:
                loss_g = loss_g + hyper["mode_seeking"] * mode_seeking_term(fake[:half], fake[half : 2 * half], z[:half], z[half : 2 * half])
        if hyper["spectral_loss"]:  # float32 FFT, outside autocast
            loss_g = loss_g + hyper["spectral_loss"] * spectral_term(fake, real)
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()
        steps_done += 1
        if average is not None:  # warm-up: early on the average follows G closely
            _average_into(average, model.generator_modules(), ema_decay_at(hyper["ema_decay"], steps_done))
        return {"gen/loss_d": loss_d.detach(), "gen/loss_g": loss_g.detach()}

    model.train()
    train_loop(step, images_uint8, labels, epochs=hyper["epochs"], batch_size=hyper["batch_size"], seed=seed, device=device, on_epoch=on_epoch, progress=progress, description="train dcgan")
    if average is not None:
        for target, source in zip(model.generator_modules(), average, strict=True):
            target.load_state_dict(source.state_dict())
    return model.eval()
