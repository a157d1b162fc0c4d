"""iqa train's option table (cli/train_methods.py) against the command's real options."""

from __future__ import annotations

import inspect

import pytest

from iqa_cli.cli.train import train
from iqa_cli.cli.train_methods import METHODS, TAKES


def test_every_option_belongs_to_a_method_and_every_listed_name_is_an_option():
    params = set(inspect.signature(train).parameters) - {"ctx"}
    listed = set().union(*TAKES.values())
    assert listed - params == set(), "TAKES names options the command does not have"
    assert params - listed == set(), "options no method takes"


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("mos", "bapps")])
def test_an_option_of_another_method_is_a_usage_error_naming_who_takes_it(cli, tmp_path, method):
    other = "--npatches" if method != "sorter" else "--variant"
    value = "3" if other == "--npatches" else "bn"
    result = cli("train", tmp_path, "--method", method, "--name", "x", "--checkpoints-dir", tmp_path / "ck",
                 other, value)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{other} does not apply to --method {method}" in lines[0], result.stderr
    assert not (tmp_path / "ck").exists()


def test_an_unknown_method_lists_them_all(cli, tmp_path):
    result = cli("train", tmp_path, "--method", "nope", "--name", "x")
    assert result.exit_code == 1 and all(m in result.stderr for m in METHODS), result.stderr
