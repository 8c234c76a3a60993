"""The commands the README and the notebook give are the kit's commands as they are.

Every command line in the README's shell blocks, and in the notebook's (shell
blocks in its text, ``!`` lines in its cells), that runs one of the kit's
commands (``atlas-ramp``, ``python download_data.py``, ``ramp-test``,
``ramp-blend``) is parsed by that command's own parser: a renamed command or
option, or a missing required one, fails here. The cheap ones run for real in
the other tests (the quick start in ``test_ramp_cli.py``).
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
from rampwf.utils.cli.blend import main as ramp_blend
from rampwf.utils.cli.testing import main as ramp_test

from atlas_ramp import cli, download

REPO = Path(__file__).resolve().parents[1]
SHELL_BLOCK = re.compile(r"```(?:bash|sh)\n(.*?)```", re.S)


def _shell_text() -> list[tuple[str, str]]:
    """(where, text) of every shell block of the README and the notebook."""
    texts = [("README.md", block) for block in SHELL_BLOCK.findall(_readme())]
    notebook = json.loads((REPO / "starting_kit.ipynb").read_text(encoding="utf-8"))
    for number, cell in enumerate(notebook["cells"]):
        source = "".join(cell["source"])
        where = f"starting_kit.ipynb cell {number}"
        if cell["cell_type"] == "markdown":
            texts += [(where, block) for block in SHELL_BLOCK.findall(source)]
        else:
            bang = [line[1:] for line in source.splitlines() if line.startswith("!")]
            texts += [(where, line) for line in bang]
    return texts


def _readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, words) of each command of the kit, continuation lines joined."""
    found = []
    for where, text in _shell_text():
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for command in _split_on(words, {"&&", ";", "|"}):
                while command and re.match(r"^[A-Z_]+=", command[0]):
                    command = command[1:]  # VARIABLE=value before the command
                if command and _program(command):
                    found.append((where, command))
    return found


def _split_on(words: list[str], separators: set[str]) -> list[list[str]]:
    commands, current = [], []
    for word in words:
        if word in separators:
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [*commands, current]


def _program(command: list[str]) -> str | None:
    """Which of the kit's commands this is, if any."""
    name = Path(command[0]).name
    if name in {"atlas-ramp", "ramp-test", "ramp-blend"}:
        return name
    if name.startswith("python") and command[1:2] == ["download_data.py"]:
        return "download_data.py"
    return None


def parse(command: list[str]) -> None:
    """Parse ``command`` with its program's own parser (SystemExit if refused)."""
    program = _program(command)
    if program == "atlas-ramp":
        module = importlib.import_module(cli.COMMANDS[command[1]][0])
        module.build_parser().parse_args(command[2:])
    elif program == "download_data.py":
        download.build_parser().parse_args(command[2:])
    else:
        click_command = ramp_test if program == "ramp-test" else ramp_blend
        click_command.make_context(program, command[1:])


COMMANDS = command_lines()


def test_the_readme_and_the_notebook_give_the_kits_commands():
    programs = {_program(command) for _, command in COMMANDS}
    assert programs == {"atlas-ramp", "ramp-test", "ramp-blend", "download_data.py"}
    sub_commands = {
        command[1] for _, command in COMMANDS if command[0].endswith("atlas-ramp")
    }
    assert {"evaluate", "report", "instructor", "server"} <= sub_commands
    assert not re.search(r"python -m atlas_ramp\.\w", _readme()), (
        "the README gives `python -m atlas_ramp.<module>`: use `atlas-ramp <command>`"
    )


# ramp-workflow's own ramp-blend declares one option twice (its warning, not ours).
@pytest.mark.filterwarnings("ignore:The parameter --min-improvement is used more")
@pytest.mark.parametrize(
    "where, command", COMMANDS, ids=[" ".join(c[:3]) for _, c in COMMANDS]
)
def test_each_command_parses_as_written(where, command):
    try:
        parse(command)
    except SystemExit as refused:
        pytest.fail(f"{where}: `{shlex.join(command)}` is refused ({refused})")


def test_a_wrong_option_is_caught(capsys):
    with pytest.raises(SystemExit):
        parse(["atlas-ramp", "evaluate", "--submision", "x", "--data", "y"])
    with pytest.raises(SystemExit):
        parse(["python", "download_data.py", "--atlass"])
    import click

    with pytest.raises(click.UsageError):
        parse(["ramp-test", "--quick-tst"])
