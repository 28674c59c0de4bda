"""`--option NAME=VALUE` for the generator benchmarks: a hyperparameter over the preset."""
from __future__ import annotations

import argparse
import ast

HELP = "a generator option over its preset, e.g. mode_seeking=1 (repeatable; Python literals, else a string)"


def add_option_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help=HELP)


def parse_options(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """{NAME: value} from NAME=VALUE items; a value that is not a Python literal stays a string."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--option takes NAME=VALUE, got {item!r}")
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value
    return options
