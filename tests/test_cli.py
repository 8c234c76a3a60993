"""``atlas-ramp``: one command line, each sub-command its module's own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atlas_ramp import cli


def test_help_lists_every_command_with_its_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for name, (_, summary) in cli.COMMANDS.items():
        assert name in shown
        assert " ".join(summary.split()) in shown


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    assert f"atlas-ramp {name}" in capsys.readouterr().out


def test_an_unknown_command_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluat"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'evaluat'" in error and "evaluate" in error


def test_python_dash_m_runs_the_same_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "atlas_ramp", "montage", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: atlas-ramp montage")
