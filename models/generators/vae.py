"""Class-conditional VAE: a conv encoder and a transposed-conv decoder, the
label as one-hot maps into the encoder and as a one-hot vector into the
decoder. Pixels are modelled as Bernoulli intensities (BCE on [0, 1]); a
sample is the decoder's mean image for z ~ N(0, temperature^2 I).

Grown with the image: one stride-2 conv stage per doubling of the side, from a
4..7 px map (`base.stage_layout`: 2 stages at 28 px, 4 at 64, 5 at 128); the
input is padded to that grid and the output cropped. Defaults by image size
in `PRESETS`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.device import autocast
from models.generators.base import TrainedGenerator, crop_to, pad_to, per_image_noise, preset_for, seeded_model, stage_layout, train_loop

DEFAULTS = dict(
    epochs=30,  # passes over the train split; ~40 s for 4,000 28x28 images on 2 CPU cores
    batch_size=64,
    lr=2e-3,  # Adam
    base_channels=32,  # channels of the encoder's first conv, doubled per stage (one per doubling of the side)
    max_channels=256,  # cap on any stage's channels
    latent_dim=16,
    kl_weight=1.0,  # beta: 1 is the plain ELBO
    temperature=1.0,  # std of z when sampling; < 1 trades diversity for cleaner images
)
# by the image's longer side (the first preset at least as large); CPU budgets on 2 cores
PRESETS = {
    32: dict(epochs=30, batch_size=64, base_channels=32, latent_dim=16),
    64: dict(epochs=60, batch_size=32, base_channels=16, latent_dim=64),
    128: dict(epochs=60, batch_size=32, base_channels=8, latent_dim=128),
}


def defaults_for(height: int, width: int) -> dict:
    return preset_for(DEFAULTS, PRESETS, height, width)


class VAE(TrainedGenerator):
    kind = "vae"

    def __init__(self, config: dict):
        super().__init__(config)
        latent, k = config["latent_dim"], self.num_classes
        stages, self.base_h, self.base_w = stage_layout(self.height, self.width)
        self.pad_h, self.pad_w = self.base_h * 2**stages, self.base_w * 2**stages
        widths = [min(config["max_channels"], config["base_channels"] * 2**i) for i in range(stages)]
        flat = widths[-1] * self.base_h * self.base_w
        encoder, previous = [], self.channels + k
        for index, width in enumerate(widths):  # the first conv has no BatchNorm, as in DCGAN's D
            encoder += [nn.Conv2d(previous, width, 4, 2, 1), *([nn.BatchNorm2d(width)] if index else []), nn.LeakyReLU(0.2)]
            previous = width
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.to_posterior = nn.Linear(flat + k, 2 * latent)
        self.from_latent = nn.Sequential(nn.Linear(latent + k, flat), nn.ReLU())
        decoder = []
        for width in reversed(widths[:-1]):
            decoder += [nn.ConvTranspose2d(previous, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU()]
            previous = width
        self.decoder = nn.Sequential(*decoder, nn.ConvTranspose2d(previous, self.channels, 4, 2, 1))

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.num_classes).float()

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one_hot = self._one_hot(labels)
        x = pad_to(x, self.pad_h, self.pad_w)
        maps = one_hot[:, :, None, None].expand(-1, -1, self.pad_h, self.pad_w)
        h = self.encoder(torch.cat([x, maps], dim=1))
        mean, log_var = self.to_posterior(torch.cat([h, one_hot], dim=1)).chunk(2, dim=1)
        return mean, log_var

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, self._one_hot(labels)], dim=1))
        h = h.view(len(z), -1, self.base_h, self.base_w)
        return crop_to(self.decoder(h), self.height, self.width)

    def sample_batch(self, labels, generators, steps=None, temperature: float | None = None):
        temperature = self.config["temperature"] if temperature is None else temperature
        z = per_image_noise(generators, (self.config["latent_dim"],), self.device) * temperature
        return torch.sigmoid(self.decode_logits(z, labels)) * 2 - 1


def build(config: dict) -> VAE:
    return VAE({**DEFAULTS, **config})


def train(images_uint8, labels, num_classes, *, hyper, seed, device, on_epoch, progress) -> VAE:
    _, channels, height, width = images_uint8.shape
    model = seeded_model(VAE, images_uint8, num_classes, hyper, seed=seed, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=hyper["lr"])
    noise = torch.Generator(device).manual_seed(seed + 1)
    pixels = channels * height * width

    def step(x, y):
        target = (x + 1) / 2
        with autocast(device):  # bf16 convs on a capable GPU; the ELBO's terms in float32 (models/device.py)
            mean, log_var = (part.float() for part in model.encode(x, y))
            z = mean + torch.randn(mean.shape, generator=noise, device=device) * torch.exp(0.5 * log_var)
            logits = model.decode_logits(z, y).float()
        # per-image sums, averaged over the batch: the ELBO in nats per image
        recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp()) / len(x)
        loss = recon + hyper["kl_weight"] * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recon = recon.detach()
        return {"gen/loss": loss.detach(), "gen/recon": recon, "gen/kl": kl.detach(), "gen/recon_per_pixel": recon / pixels}

    model.train()
    train_loop(step, images_uint8, labels, epochs=hyper["epochs"], batch_size=hyper["batch_size"], seed=seed, device=device, on_epoch=on_epoch, progress=progress, description="train vae")
    return model.eval()
