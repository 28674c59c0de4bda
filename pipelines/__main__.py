"""python -m pipelines <stage> [options]: every MLflow entry point as a command."""
from __future__ import annotations

import importlib

import click

# stage name -> module under pipelines/ holding a click command named `command`
STAGES = {
    "main": "Run the study on one dataset: train, then evaluate (reusing finished runs).",
    "train": "Train a classifier on a dataset and log it as an MLflow model.",
    "evaluate": "Score a trained classifier on a dataset's test split, clean and corrupted.",
    "synthesize": "Train or load a generator (DCGAN, VAE, DDPM, Stable Diffusion) and write N images per class.",
    "corrupt": "Write a corrupted copy of one split (salt-and-pepper, gradient noise, blend, ImageNet-C).",
    "mix": "Build a training manifest of real + synthetic images at a synthetic fraction (no images copied).",
}


class LazyGroup(click.Group):
    """Imports a stage's module only when that stage runs or shows its help."""

    def list_commands(self, ctx):
        return list(STAGES)

    def get_command(self, ctx, name):
        if name not in STAGES:
            return None
        return importlib.import_module(f"pipelines.{name}").command

    def format_commands(self, ctx, formatter):
        with formatter.section("Stages (python -m pipelines <stage> --help for its options)"):
            formatter.write_dl([(name, text) for name, text in STAGES.items()], col_max=12)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """synthmix: how synthetic and corrupted training images change an image classifier.

    Every stage is an MLflow run; see them with `mlflow ui`.
    """


if __name__ == "__main__":
    cli(prog_name="python -m pipelines")
