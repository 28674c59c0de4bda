"""The user-facing contract: MLproject parameters are the click options, help is instant."""
from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest
import yaml

from conftest import REPO, run_cli
from pipelines.__main__ import STAGES, cli


def mlproject() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())


def click_params(stage: str) -> dict[str, click.Option]:
    command = cli.get_command(None, stage)
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name != "help"}


@pytest.mark.parametrize("stage", list(STAGES))
def test_mlproject_parameters_are_the_click_options(stage):
    entry = mlproject()["entry_points"][stage]
    declared = set(entry["parameters"])
    options = click_params(stage)
    assert declared == set(options), f"MLproject-only: {declared - set(options)}, click-only: {set(options) - declared}"
    for name in declared:
        flag = "--" + name.replace("_", "-")
        assert re.search(rf"{flag} '?\{{{name}\}}'?", entry["command"]), f"{stage}: {flag} {{{name}}} missing from the command"
        assert options[name].help, f"{stage} --{name} has no help"


@pytest.mark.parametrize("stage", list(STAGES))
def test_mlproject_defaults_match_click_defaults(stage):
    entry = mlproject()["entry_points"][stage]
    for name, spec in entry["parameters"].items():
        default = click_params(stage)[name].default
        if isinstance(default, bool):
            assert str(spec["default"]).lower() == str(default).lower(), name
        elif isinstance(default, (int, float)):
            assert float(spec["default"]) == float(default), name
        else:
            assert str(spec["default"]) == str(default), name


def test_mlproject_is_written_from_the_declared_parameters():
    from pipelines.__main__ import mlproject as written

    assert (REPO / "MLproject").read_text() == written(), "MLproject is stale: run `make mlproject`"


def test_main_passes_on_the_stages_own_options():
    from pipelines import evaluate, main, mix, synthesize, train

    ours = {p.name: p for p in main.PARAMS}
    taken = {train: ("model", "pretrained", "epochs", "batch_size", "lr", "checkpoint_every"), mix: ("synthetic_run", "synthetic_data"),
             evaluate: ("severities",), synthesize: ("generator", "per_class")}
    for stage, names in taken.items():
        theirs = {p.name: p for p in stage.PARAMS}
        for name in names:
            assert (ours[name].help, ours[name].type, ours[name].default) == (theirs[name].help, theirs[name].type, theirs[name].default), name


def test_every_stage_in_the_mlproject_is_a_command():
    assert set(mlproject()["entry_points"]) == set(STAGES)


def test_help_lists_stages_without_importing_torch():
    code = (
        "import sys; from pipelines.__main__ import cli\n"
        "try:\n    cli(['train', '--help'], prog_name='pipelines')\nexcept SystemExit:\n    pass\n"
        "print('HEAVY' if {'torch', 'mlflow', 'pandas'} & set(sys.modules) else 'LIGHT')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "--resume-run" in out and out.strip().endswith("LIGHT")
    top = run_cli("--help")
    assert top.returncode == 0
    for stage in STAGES:
        assert stage in top.stdout


def test_bad_option_value_exits_2():
    result = run_cli("train", "--epochs", "0")
    assert result.returncode == 2
    assert "--epochs" in result.stderr
