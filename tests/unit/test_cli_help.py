"""`megatron-bond --help` and `--version`: every option of every command says what it does and, where it
has one, its default (a default of 0 or 0.0 was hidden once, because it compares equal to False)."""

import argparse

import pytest

from megatron_bond import __version__
from megatron_bond.cli import build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_has_a_sentence_and_its_default(command):
    parser = _commands()[command]
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.dest}: no help"
        if action.default is not None and action.default is not False and not action.required:
            assert f"(default: {action.default})" in " ".join(text.split()), f"{command} {action.dest}"


def test_simulate_shows_zero_defaults():
    text = " ".join(_commands()["simulate"].format_help().split())
    assert "(default: 0.0)" in text and "(default: 0)" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"megatron-bond {__version__}"
