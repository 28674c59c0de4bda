"""Class-conditional DCGAN.

G: [z, embed(label)] -> linear -> transposed convs -> tanh, cropped to H x W.
D: [image, one-hot label maps] -> strided convs (dropout 0.3) -> a minibatch
standard-deviation feature -> linear score. Non-saturating BCE loss,
Adam(0.5, 0.999), one D step per G step.

Why this D: a spectrally normalised projection discriminator with hinge loss
collapsed each class to one image within the CPU budget (CAS 0.26 on
mnist5k); the one-hot D without the minibatch-std feature reached 0.48; this
one 0.76 (benchmarks/synthesis.py).

Any image size: G works at H, W padded to a multiple of 4 and crops; real
and fake images are padded back the same way before D.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.generators.base import TrainedGenerator, crop_to, pad_to, padded_size, per_image_noise, seeded_model, train_loop

DEFAULTS = dict(
    epochs=30,  # passes over the train split; ~2 min for 4,000 28x28 images on 2 CPU cores
    batch_size=64,
    lr=4e-4,  # Adam, both networks; 2e-4 (the DCGAN paper's) needs more epochs than we can afford on a CPU
    base_channels=32,  # G's last hidden conv / D's first conv channels; the other layer has 2x
    latent_dim=64,  # z
    embed_dim=32,  # label embedding concatenated to z
)


class Discriminator(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int, flat: int):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(channels + num_classes, width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2), nn.Dropout(0.3),
        )
        self.score = nn.Linear(flat + flat // (2 * width), 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        maps = F.one_hot(labels, self.num_classes).float()[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        h = self.features(torch.cat([x, maps], 1))
        # minibatch standard deviation (Karras et al. 2018): lets D see a batch that lacks variety
        spread = h.std(dim=0, keepdim=True).mean(dim=1, keepdim=True).expand(len(h), 1, *h.shape[-2:])
        return self.score(torch.cat([h.flatten(1), spread.flatten(1)], 1)).squeeze(1)


class DCGAN(TrainedGenerator):
    kind = "dcgan"

    def __init__(self, config: dict):
        super().__init__(config)
        width, latent = config["base_channels"], config["latent_dim"]
        self.pad_h, self.pad_w = padded_size(self.height, 4), padded_size(self.width, 4)
        self.base_h, self.base_w = self.pad_h // 4, self.pad_w // 4
        flat = 2 * width * self.base_h * self.base_w
        self.label_embed = nn.Embedding(self.num_classes, config["embed_dim"])
        self.project = nn.Sequential(nn.Linear(latent + config["embed_dim"], flat), nn.BatchNorm1d(flat), nn.ReLU())
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, self.channels, 4, 2, 1), nn.Tanh(),
        )
        self.discriminator = Discriminator(self.channels, self.num_classes, width, flat)

    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.label_embed(labels)], dim=1)).view(len(z), -1, self.base_h, self.base_w)
        return crop_to(self.generator(h), self.height, self.width)

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.discriminator(pad_to(images, self.pad_h, self.pad_w), labels)

    def generator_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]

    def sample_batch(self, labels, generators, steps=None):
        return self.generate(per_image_noise(generators, (self.config["latent_dim"],), self.device), labels)


def build(config: dict) -> DCGAN:
    return DCGAN(config)


def train(images_uint8, labels, num_classes, *, hyper, seed, device, on_epoch, progress) -> DCGAN:
    model = seeded_model(DCGAN, images_uint8, num_classes, hyper, seed=seed, device=device)
    betas = (0.5, 0.999)
    optimizer_g = torch.optim.Adam(model.generator_parameters(), lr=hyper["lr"], betas=betas)
    optimizer_d = torch.optim.Adam(model.discriminator.parameters(), lr=hyper["lr"], betas=betas)
    noise = torch.Generator(device).manual_seed(seed + 1)

    def step(real, y):
        z = torch.randn((len(real), hyper["latent_dim"]), generator=noise, device=device)
        fake = model.generate(z, y)
        # non-saturating GAN loss: softplus(-s) = -log sigmoid(s) on real, softplus(s) on fake
        loss_d = F.softplus(-model.discriminate(real, y)).mean() + F.softplus(model.discriminate(fake.detach(), y)).mean()
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()
        loss_g = F.softplus(-model.discriminate(fake, y)).mean()
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()
        return {"gen/loss_d": loss_d.item(), "gen/loss_g": loss_g.item()}

    model.train()
    train_loop(step, images_uint8, labels, epochs=hyper["epochs"], batch_size=hyper["batch_size"], seed=seed, device=device, on_epoch=on_epoch, progress=progress, description="train dcgan")
    return model.eval()
