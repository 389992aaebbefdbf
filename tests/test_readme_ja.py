"""README.ja.md keeps in step with README.md and the code: the same set-up commands (the
Quickstart's shell lines), every command of README's table with the same options, every
command the parser has, and one row for each configuration key `config.py` defines."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from image_search.cli_parser import build_parser
from image_search.config import all_keys

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_JA = ROOT / "README.ja.md"
FENCED_SHELL = re.compile(r"```bash\n(.*?)```", re.DOTALL)
COMMAND_ROW = re.compile(r"^\| `(image-search[^`]*)` \|", re.MULTILINE)
KEY_ROW = re.compile(r"^\| (`[^|]+`) \|", re.MULTILINE)


def section(text: str, heading: str) -> str:
    """The text under `heading` (a `## ` heading) up to the next `## ` heading."""
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def shell_commands(text: str) -> list[str]:
    """The commands of the fenced shell blocks, each without its comment."""
    lines = [line for block in FENCED_SHELL.findall(text) for line in block.splitlines()]
    return [line.split("  #", 1)[0].strip() for line in lines if line.strip()]


def table_keys(text: str) -> list[str]:
    """The configuration keys named in the first column of the text's tables (a row may name
    two keys); command rows left out."""
    keys = []
    for cell in KEY_ROW.findall(text):
        if not cell.startswith("`image-search"):
            keys += re.findall(r"`([^`]+)`", cell)
    return keys


def subcommands() -> list[str]:
    parser = build_parser()
    choices = next(
        action.choices
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    return list(choices)


def test_the_set_up_commands_are_the_same() -> None:
    english = shell_commands(section(README.read_text(encoding="utf-8"), "## Quickstart"))
    assert len(english) >= 3  # the two set-up commands and the offline try-out
    japanese = shell_commands(README_JA.read_text(encoding="utf-8"))
    assert [line for line in english if line not in japanese] == []


def test_every_command_of_readme_is_in_readme_ja_with_the_same_options() -> None:
    english = COMMAND_ROW.findall(README.read_text(encoding="utf-8"))
    japanese = COMMAND_ROW.findall(README_JA.read_text(encoding="utf-8"))
    assert len(english) >= 6
    assert sorted(japanese) == sorted(english)


def test_every_command_the_parser_has_is_in_readme_ja() -> None:
    text = README_JA.read_text(encoding="utf-8")
    commands = subcommands()
    assert {"index", "search", "serve", "status", "duplicates", "help"} <= set(commands)
    missing = [name for name in commands if f"`image-search {name}" not in text]
    assert missing == []
    assert "--text" in text  # search by words, the flag README.ja.md shows in Japanese


def test_readme_ja_has_one_row_for_each_configuration_key() -> None:
    keys = table_keys(README_JA.read_text(encoding="utf-8"))
    assert sorted(set(keys)) == sorted(keys), "a key with two rows"
    assert set(all_keys()) - set(keys) == set(), "keys without a row in README.ja.md"
    assert set(keys) - set(all_keys()) == set(), "README.ja.md rows naming no key"
    assert table_keys(section(README.read_text(encoding="utf-8"), "## Configuration")) == keys
