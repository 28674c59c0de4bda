"""Class-conditional VAE: a conv encoder and a transposed-conv decoder, the
label as one-hot maps into the encoder and as a one-hot vector into the
decoder. Pixels are modelled as Bernoulli intensities (BCE on [0, 1]); a
sample is the decoder's mean image for z ~ N(0, temperature^2 I).

Any image size: the input is padded to a multiple of 4 and the output cropped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.generators.base import TrainedGenerator, crop_to, pad_to, padded_size, per_image_noise, seeded_model, train_loop

DEFAULTS = dict(
    epochs=30,  # passes over the train split; ~40 s for 4,000 28x28 images on 2 CPU cores
    batch_size=64,
    lr=2e-3,  # Adam
    base_channels=32,  # channels of the first conv; the second has 2x
    latent_dim=16,
    kl_weight=1.0,  # beta: 1 is the plain ELBO
    temperature=1.0,  # std of z when sampling; < 1 trades diversity for cleaner images
)


class VAE(TrainedGenerator):
    kind = "vae"

    def __init__(self, config: dict):
        super().__init__(config)
        width, latent, k = config["base_channels"], config["latent_dim"], self.num_classes
        self.pad_h, self.pad_w = padded_size(self.height, 4), padded_size(self.width, 4)
        self.base_h, self.base_w = self.pad_h // 4, self.pad_w // 4
        flat = 2 * width * self.base_h * self.base_w
        self.encoder = nn.Sequential(
            nn.Conv2d(self.channels + k, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_posterior = nn.Linear(flat + k, 2 * latent)
        self.from_latent = nn.Sequential(nn.Linear(latent + k, flat), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, self.channels, 4, 2, 1),
        )

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
    return VAE(config)


def train(images_uint8, labels, num_classes, *, hyper, seed, device, on_epoch, progress) -> VAE:
    _, channels, height, width = images_uint8.shape
    model = seeded_model(VAE, images_uint8, num_classes, hyper, seed=seed, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=hyper["lr"])
    noise = torch.Generator(device).manual_seed(seed + 1)
    pixels = channels * height * width

    def step(x, y):
        target = (x + 1) / 2
        mean, log_var = model.encode(x, y)
        z = mean + torch.randn(mean.shape, generator=noise, device=device) * torch.exp(0.5 * log_var)
        logits = model.decode_logits(z, y)
        # per-image sums, averaged over the batch: the ELBO in nats per image
        recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp()) / len(x)
        loss = recon + hyper["kl_weight"] * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"gen/loss": loss.item(), "gen/recon": recon.item(), "gen/kl": kl.item(), "gen/recon_per_pixel": recon.item() / pixels}

    model.train()
    train_loop(step, images_uint8, labels, epochs=hyper["epochs"], batch_size=hyper["batch_size"], seed=seed, device=device, on_epoch=on_epoch, progress=progress, description="train vae")
    return model.eval()
