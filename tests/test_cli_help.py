"""Every `--help` screen reads whole in an 80-column terminal.

The commands are enumerated from the Typer app itself, so commands added later are covered too.
For each screen: every option name appears whole, every option's and the command's help text
appears whole (wrapping may move line breaks, nothing else), no line ends in an ellipsis (rich and
click shorten what does not fit that way), and no line is wider than the terminal.
"""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from iqa_cli.cli.app import app

WIDTH = 80


def command_paths() -> list[tuple[tuple[str, ...], object]]:
    """(path of sub-command names, click command) for the root and every command below it."""
    found = []

    def walk(path: tuple[str, ...], command) -> None:
        found.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not sub.hidden:
                walk((*path, name), sub)

    walk((), typer.main.get_command(app))
    return found


COMMANDS = command_paths()


def squeezed(text: str) -> str:
    """Text without whitespace or click's no-rewrap markers: what survives any re-wrapping."""
    return re.sub(r"\s+", "", text.replace("\b", ""))


def test_the_enumeration_reaches_nested_commands():
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "score-pair", "list-metrics", "eval-bapps", "eval-bapps 2afc", "eval-bapps jnd"} <= paths


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "iqa" for p, _ in COMMANDS])
def test_help_is_whole_at_80_columns(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": None})
    assert result.exit_code == 0, result.output
    screen = result.output
    lines = screen.splitlines()
    assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
    body = lines[screen.split("\n\n")[0].count("\n") + 1:]  # past the usage, where '...' means 'repeatable'
    assert not [line for line in body if line.rstrip().endswith(("...", "…"))]
    assert "…" not in screen
    words = squeezed(screen)
    for param in command.params:
        for name in (*param.opts, *param.secondary_opts) if param.param_type_name == "option" else ():
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", screen), f"{name} is not whole"
        if getattr(param, "help", None) and not getattr(param, "hidden", False):
            assert squeezed(param.help) in words, f"the help of {param.name} is cut: {param.help!r}"
    if command.help:
        assert squeezed(command.help) in words, "the command's description is cut"
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", screen), f"sub-command {name} is not listed"
