"""One source for every key (issue 19): `Settings`' fields carry each key's help, default words,
fixed choices and flag; `help config`, `--help` and the validation read them, and README's key
table is held equal to them here."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from image_search.batch_sizes import CPU_BATCH_SIZE, GPU_LARGE_BATCH_SIZE, GPU_SMALL_BATCH_SIZE
from image_search.cli_parser import config_help
from image_search.config import (
    Settings,
    all_keys,
    attribute_of,
    key_info,
    key_kind,
    load_settings,
    load_sourced_settings,
    shown_default,
    value_kind,
)
from image_search.errors import ConfigError
from image_search.executor_local import batch_size_for

pytestmark = pytest.mark.fast

README = Path(__file__).resolve().parents[1] / "README.md"
# "(default: X)" ends where the help goes on to the values (":") or the short flag (";").
PRINTED_DEFAULT = re.compile(r"\(default: (.*?)\)(?=:|;|$)")


def printed_help() -> dict[str, str]:
    """`help config`'s entries, each key's wrapped lines joined into one."""
    entries: dict[str, str] = {}
    key = None
    for line in config_help().splitlines():
        if entry := re.match(r"^  (\S+)\s{2,}(.*)$", line):
            key = entry[1]
            entries[key] = entry[2]
        elif key is not None and line.startswith("    "):
            entries[key] += " " + line.strip()
    return entries


def printed_defaults() -> dict[str, str]:
    return {key: PRINTED_DEFAULT.search(text)[1] for key, text in printed_help().items()}


def readme_defaults() -> dict[str, str]:
    """README's configuration table, key → default as written, formatting dropped
    (`960` → 960, *(unset)* → unset); a row of two keys gives each its own default."""
    section = README.read_text(encoding="utf-8").split("\n## Configuration\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    defaults: dict[str, str] = {}
    for row in rows:
        keys_cell, default_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        keys = re.findall(r"`([^`]+)`", keys_cell)
        values = default_cell.split(",") if len(keys) > 1 else [default_cell]
        assert len(values) == len(keys), row
        for key, value in zip(keys, values, strict=True):
            assert key not in defaults, f"two README rows for {key}"
            defaults[key] = normalised(value)
    return defaults


def normalised(text: str) -> str:
    text = " ".join(text.replace("`", "").replace("*", "").split())
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text


def test_readme_table_has_every_key_once_with_the_default_help_config_prints() -> None:
    readme = readme_defaults()
    printed = printed_defaults()
    assert sorted(printed) == sorted(all_keys())
    assert set(all_keys()) - set(readme) == set(), "keys without a row in README's table"
    assert set(readme) - set(all_keys()) == set(), "README rows naming no key"
    assert readme == printed


def test_help_config_prints_each_fields_help_default_choices_and_short_flag() -> None:
    printed = printed_help()
    for key in all_keys():
        info = key_info(key)
        text = printed[key]
        assert text.startswith(f"{info.help} (default: {shown_default(key)})"), key
        for value, note in info.choices.items():
            assert (f"{value} ({note})" if note else value) in text, (key, value)
        for alias in info.aliases:
            assert f"{alias} for short" in text
        if key_kind(key) is bool:
            assert text.endswith(": true or false")


def test_help_config_lines_fit_the_width() -> None:
    lines = config_help().splitlines()
    assert max(map(len, lines)) <= 100


def test_help_config_with_values_keeps_every_line_of_the_keys_help(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"top-k": 3}))
    with_values = config_help(load_sourced_settings(config, environ={})).splitlines()
    assert max(map(len, with_values)) <= 100
    assert set(config_help().splitlines()) <= set(with_values)
    assert sum(line.lstrip().startswith("value: ") for line in with_values) == len(all_keys())


def test_shown_defaults_come_from_the_fields() -> None:
    defaults = printed_defaults()
    assert defaults["top-k"] == "10" and defaults["data-directory"] == ".image-search"
    assert defaults["postgres-host"] == "unset" and defaults["save-results"] == "true"


def test_the_batch_size_help_states_the_sizes_the_executor_chooses_from() -> None:
    help_text = printed_defaults()["batch-size"]
    assert help_text == (
        f"{CPU_BATCH_SIZE} on the CPU; by free memory on a GPU "
        f"({GPU_SMALL_BATCH_SIZE}-{GPU_LARGE_BATCH_SIZE})"
    )
    assert batch_size_for(Settings(), "cpu") == CPU_BATCH_SIZE


@pytest.mark.parametrize(
    ("annotation", "kind", "optional"),
    [
        (bool, bool, False),
        (int | None, int, True),
        (Path, Path, False),
        (str | None, str, True),
        # A list-typed key (glob patterns, say): the collection, not a type named inside it.
        (tuple[str, ...], tuple[str, ...], False),
        (list[Path] | None, list[Path], True),
    ],
)
def test_a_keys_type_is_read_from_its_annotation(
    annotation: object, kind: object, optional: bool
) -> None:
    assert value_kind(annotation) == (kind, optional)


def test_every_keys_kind_is_the_type_of_its_default() -> None:
    for key in all_keys():
        default = getattr(Settings(), attribute_of(key))
        if default is not None:
            kind = typing.get_origin(key_kind(key)) or key_kind(key)  # tuple[str, ...]: tuple
            assert isinstance(default, kind), key


def settings_with(tmp_path: Path, key: str, value: object) -> object:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({key: value}))
    return load_settings(config, environ={})


@pytest.mark.parametrize("key", [key for key in all_keys() if key_info(key).choices])
def test_a_key_with_fixed_choices_takes_each_and_nothing_else(tmp_path: Path, key: str) -> None:
    choices = list(key_info(key).choices)
    for value in choices:
        assert getattr(settings_with(tmp_path, key, value), key.replace("-", "_")) == value
    with pytest.raises(ConfigError) as refused:
        settings_with(tmp_path, key, "nonsense")
    assert str(refused.value) == f"configuration key '{key}' must be one of {', '.join(choices)}"


@pytest.mark.parametrize("key", [key for key in all_keys() if key_kind(key) is int])
def test_every_integer_key_refuses_zero(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"configuration key '{key}' must be"):
        settings_with(tmp_path, key, 0)
