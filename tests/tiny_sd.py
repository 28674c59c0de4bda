"""A tiny, random, offline Stable Diffusion pipeline for tests.

`build_tiny_sd(folder)` writes a complete diffusers folder (UNet with two
levels of 4 and 8 channels, a 2-level VAE, a 2-layer CLIP text encoder and a
byte-level BPE tokenizer written here) in about a second; it makes 32x32
images (16x16 latents). Its images are noise-like, but deterministic per seed.

Safety checker, for the "flagged image is dropped" path:
- `build_tiny_sd(folder, safety_checker=True)` saves a real tiny
  `StableDiffusionSafetyChecker` whose thresholds flag every image, so a
  loaded pipeline returns only black, flagged images;
- `install_fake_safety_checker(pipe, threshold)` flags exactly the images
  whose mean brightness (0..1) is above `threshold`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

# words whose BPE merges the vocabulary carries, so prompts tokenize into a few tokens
_WORDS = ("a", "photo", "of", "the", "digit", "handwritten", "number", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "snow", "blurry")
VOCAB_SIZE = 1000  # text encoder embedding rows; >= the tokenizer's vocabulary


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    alphabet = []
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:  # whitespace and control bytes map past 255
            alphabet.append(chr(256 + extra))
            extra += 1
    return alphabet


def write_tokenizer_files(folder: Path) -> Path:
    """vocab.json and merges.txt of a CLIP-style byte-level BPE over `_WORDS`."""
    alphabet = _byte_alphabet()
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:  # merge left to right: "p h", "ph o", ...
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
                tokens.append(pair[0] + pair[1])
            symbols = [pair[0] + pair[1]] + symbols[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    assert len(vocab) <= VOCAB_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder


def tiny_feature_extractor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _tiny_safety_checker(bos_token_id: int, eos_token_id: int):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=VOCAB_SIZE, bos_token_id=bos_token_id, eos_token_id=eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=4),
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        # a concept scores cos - threshold; cos >= -1 > -2, so every image is flagged
        checker.concept_embeds_weights.fill_(-2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    return checker


def build_tiny_sd(folder: Path, *, safety_checker: bool = False, seed: int = 0) -> Path:
    """Write a tiny random Stable Diffusion pipeline to `folder` (save_pretrained) and return it."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_files(folder / "tokenizer"), model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(4, 8),
            layers_per_block=1,
            norm_num_groups=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(4, 8),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=2,
            sample_size=32,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=VOCAB_SIZE,
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        checker = _tiny_safety_checker(tokenizer.bos_token_id, tokenizer.eos_token_id) if safety_checker else None
    # Stable Diffusion v1's noise schedule
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=tiny_feature_extractor() if safety_checker else None,
        requires_safety_checker=safety_checker,
    )
    pipe.save_pretrained(folder)
    return folder


class FakeSafetyChecker(nn.Module):
    """Flags, and blacks out like the real one, the images whose mean brightness (0..1) is above `threshold`."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.register_buffer("anchor", torch.zeros(1))  # follows pipe.to(device, dtype)

    @property
    def device(self) -> torch.device:  # diffusers asks every component for these
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def forward(self, images, clip_input):
        brightness = [float((torch.as_tensor(image).float().mean() + 1) / 2) if torch.is_tensor(image) else float(image.mean()) for image in images]
        flagged = [value > self.threshold for value in brightness]
        for index, flag in enumerate(flagged):
            if flag:
                images[index] = images[index] * 0  # what the real checker does; not denormalised, so black
        return images, flagged


def install_fake_safety_checker(pipe, threshold: float) -> FakeSafetyChecker:
    """Give a loaded pipeline a `FakeSafetyChecker` (and the feature extractor it needs)."""
    checker = FakeSafetyChecker(threshold).to(pipe.device)
    pipe.feature_extractor = tiny_feature_extractor()
    pipe.safety_checker = checker
    return checker
