"""Class-conditional denoising diffusion: a small `diffusers.UNet2DModel` with a
class embedding, trained on images noised by `DDPMScheduler` (1000 training
timesteps, cosine schedule) to predict v = sqrt(a) noise - sqrt(1 - a) image
(or the noise itself with prediction_type="epsilon"), MSE. With `label_dropout` > 0 the label is replaced
by a "no class" token (index num_classes) that often, which lets sampling use
classifier-free guidance (`guidance` > 0).

Sampling uses diffusers' schedulers, rebuilt from the training scheduler's
config: `scheduler="dpm"` (DPMSolverMultistepScheduler, the default, few
steps), `"ddim"` (DDIMScheduler, eta 0) or `"ddpm"` (ancestral DDPM; steps=1000
is the sampler the model was trained for). Image i draws its starting noise
and, for ancestral DDPM, every step's noise from its own generator.

Grown with the image: `block_channels` has one UNet level per entry, each but
the last halving the map; the presets add a level per doubling of the side.
Images are padded to a multiple of 2^(levels-1) and cropped.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from models.device import autocast
from models.generators.base import TrainedGenerator, crop_to, ema_decay_at, pad_to, padded_size, per_image_noise, preset_for, seeded_model, train_loop

DEFAULTS = dict(
    epochs=16,  # passes over the train split (1,000 steps); ~3 min for 4,000 28x28 images on 2 CPU cores
    batch_size=64,
    lr=2e-3,  # AdamW, cosine decay to 0 over training
    block_channels=(16, 32, 32),  # UNet block widths (260k parameters); len - 1 downsamplings
    train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",  # DDPMScheduler's noise schedule: cosine (Nichol & Dhariwal 2021)
    prediction_type="v_prediction",  # the UNet predicts v (Salimans & Ho 2022): well-conditioned at every t, so few-step samplers stay stable
    label_dropout=0.1,  # share of training labels replaced by the "no class" token
    guidance=0.0,  # classifier-free guidance weight when sampling; 0 (plain conditional) is 3x faster, same CAS on mnist5k as 0.5-2
    scheduler="dpm",  # default sampler: dpm, ddim or ddpm
    steps=20,  # default sampling steps
    ema_decay=0.995,  # weights averaged over the last ~1/(1-decay) steps are the ones sampled
)
# by the image's longer side: one more down block (a halving) per doubling, so the
# deepest map stays 7..8 px; CPU budgets on 2 cores
PRESETS = {
    32: dict(block_channels=(16, 32, 32)),
    64: dict(block_channels=(16, 32, 64, 64), epochs=40, batch_size=32),
    128: dict(block_channels=(16, 32, 32, 64, 64), epochs=40, batch_size=32),
}


def defaults_for(height: int, width: int) -> dict:
    return preset_for(DEFAULTS, PRESETS, height, width)

SCHEDULERS = ("dpm", "ddim", "ddpm")


class DDPM(TrainedGenerator):
    kind = "ddpm"

    def __init__(self, config: dict):
        from diffusers import UNet2DModel

        super().__init__(config)
        widths = tuple(config["block_channels"])
        multiple = 2 ** (len(widths) - 1)
        self.pad_h, self.pad_w = padded_size(self.height, multiple), padded_size(self.width, multiple)
        self.unet = UNet2DModel(
            sample_size=(self.pad_h, self.pad_w),
            in_channels=self.channels,
            out_channels=self.channels,
            layers_per_block=1,
            block_out_channels=widths,
            down_block_types=("DownBlock2D",) * len(widths),
            up_block_types=("UpBlock2D",) * len(widths),
            norm_num_groups=8,
            num_class_embeds=self.num_classes + 1,  # the last one means "no class"
        )
        self.default_steps = int(config["steps"])
        self.sampler_name = config["scheduler"]

    def training_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=int(self.config["train_timesteps"]),
            beta_schedule=self.config["beta_schedule"],
            prediction_type=self.config["prediction_type"],
            timestep_spacing="trailing",  # few-step samplers start at t = T, where the noise is pure
        )

    def sampling_scheduler(self, name: str):
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        classes = {"dpm": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "ddpm": DDPMScheduler}
        if name not in classes:
            raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
        # DDIM would clip x0 but keep the unclipped noise estimate, which guidance
        # throws off course; unclipped it is first-order DPM-Solver, which stays stable
        extra = {"clip_sample": False} if name == "ddim" else {}
        return classes[name].from_config(self.training_scheduler().config, **extra)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, class_labels=labels).sample

    def predict_for_sampling(self, noisy: torch.Tensor, timesteps, labels: torch.Tensor) -> torch.Tensor:
        """The UNet under bf16 autocast where the device does it natively, back in float32
        so the scheduler's many small updates are not rounded to bf16."""
        with autocast(self.device):
            return self.predict(noisy, timesteps, labels).float()

    def sample_batch(self, labels, generators, steps=None, scheduler: str | None = None, guidance: float | None = None):
        steps = self.default_steps if steps is None else int(steps)
        guidance = self.config["guidance"] if guidance is None else float(guidance)
        sampler = self.sampling_scheduler(scheduler or self.config["scheduler"])
        sampler.set_timesteps(steps, device=self.device)
        x = per_image_noise(generators, (self.channels, self.pad_h, self.pad_w), self.device) * sampler.init_noise_sigma
        no_class = torch.full_like(labels, self.num_classes)
        for t in sampler.timesteps:
            model_input = sampler.scale_model_input(x, t)
            if guidance > 0:
                conditional, unconditional = self.predict_for_sampling(model_input.repeat(2, 1, 1, 1), t, torch.cat([labels, no_class])).chunk(2)
                prediction = unconditional + (1 + guidance) * (conditional - unconditional)
            else:
                prediction = self.predict_for_sampling(model_input, t, labels)
            x = sampler.step(prediction, t, x, generator=generators).prev_sample
        return crop_to(x, self.height, self.width)


def build(config: dict) -> DDPM:
    return DDPM(config)


def train(images_uint8, labels, num_classes, *, hyper, seed, device, on_epoch, progress) -> DDPM:
    if hyper["scheduler"] not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {hyper['scheduler']!r}; choose one of {', '.join(SCHEDULERS)}")
    model = seeded_model(DDPM, images_uint8, num_classes, hyper, seed=seed, device=device, block_channels=list(hyper["block_channels"]))
    average = copy.deepcopy(model).requires_grad_(False)
    noise_scheduler = model.training_scheduler()
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=hyper["lr"], weight_decay=0.0)
    steps_per_epoch = max(1, len(images_uint8) // min(hyper["batch_size"], len(images_uint8)))
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hyper["lr"], total_steps=hyper["epochs"] * steps_per_epoch, pct_start=0.1)
    rng = torch.Generator(device).manual_seed(seed + 1)
    steps_done = 0

    def step(x, y):
        nonlocal steps_done
        x = pad_to(x, model.pad_h, model.pad_w)
        noise = torch.randn(x.shape, generator=rng, device=device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x),), generator=rng, device=device)
        drop = torch.rand(len(y), generator=rng, device=device) < hyper["label_dropout"]
        y = torch.where(drop, torch.full_like(y, num_classes), y)
        target = noise if hyper["prediction_type"] == "epsilon" else noise_scheduler.get_velocity(x, noise, timesteps)
        with autocast(device):  # bf16 UNet on a capable GPU; the loss in float32 (models/device.py)
            prediction = model.predict(noise_scheduler.add_noise(x, noise, timesteps), timesteps, y)
        loss = F.mse_loss(prediction.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        steps_done += 1
        decay = ema_decay_at(hyper["ema_decay"], steps_done)  # with a warm-up
        with torch.no_grad():
            for averaged, current in zip(average.unet.parameters(), model.unet.parameters(), strict=True):
                averaged.lerp_(current, 1 - decay)
        return {"gen/loss": loss.detach()}

    model.train()
    train_loop(step, images_uint8, labels, epochs=hyper["epochs"], batch_size=hyper["batch_size"], seed=seed, device=device, on_epoch=on_epoch, progress=progress, description="train ddpm")
    return average.eval()
