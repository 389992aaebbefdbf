"""Configuration keys: booleans (trust-remote-code) take JSON true/false in the file and the
words true/false/1/0/yes/no from the environment and flags; null and unknown keys name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from image_search.cli import settings_from
from image_search.cli_parser import build_parser
from image_search.config import Settings, load_settings, load_sourced_settings
from image_search.errors import ConfigError

KEY = "trust-remote-code"
ENV = "IMAGE_SEARCH_TRUST_REMOTE_CODE"


def config_file(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return path


def test_default_is_true(tmp_path: Path) -> None:
    assert Settings().trust_remote_code is True
    assert load_settings(config_file(tmp_path, {}), environ={}).trust_remote_code is True


@pytest.mark.parametrize("value", [True, False])
def test_json_true_and_false(tmp_path: Path, value: bool) -> None:
    settings = load_settings(config_file(tmp_path, {KEY: value}), environ={})
    assert settings.trust_remote_code is value


@pytest.mark.parametrize("value", ["false", "yes", 0, 1, None, []])
def test_json_accepts_only_true_and_false(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=f"'{KEY}' must be true or false"):
        load_settings(config_file(tmp_path, {KEY: value}), environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        (" No ", False),
        ("TRUE", True),
    ],
)
def test_words_from_environment_and_flags(tmp_path: Path, text: str, expected: bool) -> None:
    config = config_file(tmp_path, {KEY: not expected})
    from_env = load_settings(config, environ={ENV: text})
    from_flag = load_settings(config, {KEY: text}, environ={})
    assert from_env.trust_remote_code is expected
    assert from_flag.trust_remote_code is expected


@pytest.mark.parametrize("text", ["maybe", "", "2", "on"])
def test_other_words_are_an_error_naming_the_key(tmp_path: Path, text: str) -> None:
    config = config_file(tmp_path, {})
    with pytest.raises(ConfigError, match=f"'{KEY}'"):
        load_settings(config, environ={ENV: text})
    with pytest.raises(ConfigError, match=f"'{KEY}'"):
        load_settings(config, {KEY: text}, environ={})


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    config = config_file(tmp_path, {KEY: False})
    assert load_settings(config, environ={ENV: "yes"}).trust_remote_code is True
    assert load_settings(config, {KEY: "no"}, environ={ENV: "yes"}).trust_remote_code is False


def test_every_command_takes_the_flag(tmp_path: Path) -> None:
    config = config_file(tmp_path, {})
    for command in (["index"], ["search", "--text", "a cat"], ["status"], ["serve"], []):
        args = build_parser().parse_args([*command, "--env", str(config), f"--{KEY}", "false"])
        assert settings_from(args).trust_remote_code is False, command


def test_the_effective_settings_show_the_key(tmp_path: Path) -> None:
    settings = load_settings(config_file(tmp_path, {KEY: False}), environ={})
    assert settings.to_dict()[KEY] is False
    assert settings.redacted()[KEY] is False


def test_a_bad_value_on_the_command_line_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_cli("status", "--env", str(config_file(tmp_path, {})), f"--{KEY}", "maybe")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{KEY}'" in lines[0] and "'maybe'" in lines[0]


@pytest.mark.parametrize("key", ["dimension", "model-name", "source-directory"])
def test_null_for_a_key_that_needs_a_value_names_the_key(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' must not be null"):
        load_settings(config_file(tmp_path, {key: None}), environ={})


def test_null_leaves_an_optional_key_unset(tmp_path: Path) -> None:
    settings = load_settings(config_file(tmp_path, {"postgres-host": None}), environ={})
    assert settings.postgres_host is None


def test_the_switches_of_debug_and_the_real_model_test_are_not_keys(tmp_path: Path) -> None:
    environ = {"IMAGE_SEARCH_REAL_MODEL": "1", "IMAGE_SEARCH_DEBUG": "1"}
    assert load_settings(config_file(tmp_path, {}), environ=environ) == Settings()
    with pytest.raises(ConfigError, match="unknown configuration key 'other-thing'"):
        load_settings(config_file(tmp_path, {}), environ={"IMAGE_SEARCH_OTHER_THING": "1"})


def test_each_value_is_traced_to_the_layer_that_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {KEY: False, "top-k": 3, "table-name": "holiday"}
    config = config_file(tmp_path, values).rename(tmp_path / "my.json")
    flags, environ = {KEY: "yes", "top-k": None}, {ENV: "no", "IMAGE_SEARCH_TOP_K": "4"}
    sourced = load_sourced_settings(config, flags, environ)
    assert sourced.settings == load_settings(config, flags, environ)
    assert (sourced.settings.trust_remote_code, sourced.settings.top_k) == (True, 4)
    assert (sourced.sources[KEY], sourced.sources["top-k"]) == ("flag", "environment")
    assert (sourced.sources["table-name"], sourced.sources["dimension"]) == ("file", "default")
    assert sourced.file == config
    monkeypatch.chdir(tmp_path)  # no --env: config.json here, if there is one
    assert load_sourced_settings(environ={}).file is None
    config.rename(tmp_path / "config.json")
    assert load_sourced_settings(environ={}).file == Path("config.json")
    assert load_sourced_settings(environ={}).sources["table-name"] == "file"
