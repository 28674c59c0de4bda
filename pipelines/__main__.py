"""python -m pipelines <stage> [options]: every MLflow entry point as a command."""
from __future__ import annotations

import importlib

import click

# stage name -> module under pipelines/ holding a click command named `command`
STAGES = {
    "main": "The whole study: synthesize, then mix -> train -> evaluate per ratio x augment x seed; report with 95% CIs.",
    "train": "Train a classifier on a dataset and log it as an MLflow model.",
    "evaluate": "Score a trained classifier on a dataset's test split, clean and corrupted.",
    "synthesize": "Train or load a generator (DCGAN, VAE, DDPM, Stable Diffusion) and write N images per class.",
    "corrupt": "Write a corrupted copy of one split (salt-and-pepper, gradient noise, blend, ImageNet-C).",
    "mix": "Build a training manifest of real + synthetic images at a synthetic fraction (no images copied).",
    "sweep": "Optuna study over synthetic ratio, corruption, severity and lr with pruning; workers share it via --storage.",
    "detect": "Train a real-vs-synthetic detector (ResNet50 or any torchvision model); AUC, and transfer across generators.",
    "register": "Register the best classifier of a study (by a validation metric) and point the alias champion at it.",
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


def mlproject() -> str:
    """The MLproject file, written from each stage's declared parameters (tests/test_cli.py checks it is current)."""
    import textwrap

    import click

    lines = [
        "name: synthmix",
        "",
        "# Written by `python -m pipelines.__main__ --mlproject > MLproject` from the stages' declared",
        "# parameters; do not edit by hand. One front door per stage:",
        "# `mlflow run . -e <stage> -P name=value --env-manager local`, the same names as",
        "# `python -m pipelines <stage> --help` (with - for _).",
        "conda_env: conda.yaml",
        "",
        "entry_points:",
    ]
    for stage in STAGES:
        command = importlib.import_module(f"pipelines.{stage}").command
        lines.append(f"  {stage}:")
        lines.append("    parameters:")
        words = [f"python -m pipelines {stage}"]
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            numeric = isinstance(param.default, (int, float)) and not isinstance(param.default, bool)
            default = param.default if numeric else str(param.default).lower() if isinstance(param.default, bool) else param.default
            default = (repr(default) if numeric else '"' + str(default).replace('"', '\\"') + '"')
            lines.append(f"      {param.name}: {{type: {'float' if numeric else 'string'}, default: {default}}}")
            words.append(f"{param.opts[0]} {{{param.name}}}")
        lines.append("    command: >-")
        lines.extend(textwrap.wrap(" ".join(words), width=100, initial_indent="      ", subsequent_indent="      ", break_on_hyphens=False, break_long_words=False))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--mlproject"]:
        sys.stdout.write(mlproject())
        sys.exit(0)
    cli(prog_name="python -m pipelines")
