"""Help that follows the user: --env, --debug and every key flag are taken before or after the
command name (`help config` included), and `help config` shows each key's value as a command
given the same command line would use it, where that value came from, and never a secret."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from image_search.config import Settings, all_keys, key_info, shown_default

pytestmark = pytest.mark.fast

COMMANDS = [
    ["index"],
    ["search", "--text", "a cat"],
    ["duplicates"],
    ["status"],
    ["serve"],
    ["help", "config"],
    [],
]


def write_json(path: Path, values: object) -> Path:
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def value_lines(text: str) -> dict[str, str]:
    """`help config`'s "value: …" line of each key, wrapped lines joined."""
    values: dict[str, str] = {}
    key, in_value = None, False
    for line in text.splitlines():
        if entry := re.match(r"^  (\S+)\s{2,}", line):
            key, in_value = entry[1], False
        elif key is not None and line.startswith("    "):
            if line.strip().startswith("value: "):
                values[key], in_value = line.strip().removeprefix("value: "), True
            elif in_value:
                values[key] += " " + line.strip()
    return values


def help_config(*args: str, cwd: Path, env: dict | None = None) -> tuple[dict, dict[str, str]]:
    """`help config ARGS --json` and `help config ARGS`: the JSON and the value lines."""
    as_json = run_cli("help", "config", *args, "--json", cwd=cwd, env=env)
    assert as_json.returncode == 0, as_json.stderr
    shown = run_cli("help", "config", *args, cwd=cwd, env=env)
    assert shown.returncode == 0, shown.stderr
    return json.loads(as_json.stdout), value_lines(shown.stdout)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c else "run-all")
@pytest.mark.parametrize("env_flag", ["--env", "--config"])
def test_env_is_read_before_or_after_any_command(
    tmp_path: Path, command: list[str], env_flag: str
) -> None:
    """A file whose top-k cannot work: reading it is exit 2 naming the key, before anything
    starts, wherever --env stands."""
    config = write_json(tmp_path / "my.json", {"top-k": 0})
    for argv in ([env_flag, str(config), *command], [*command, env_flag, str(config)]):
        done = run_cli(*argv, cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.strip().splitlines() == [
            "image-search: error: configuration key 'top-k' must be a positive integer"
        ], argv


@pytest.mark.parametrize(
    "argv",
    [
        ["--env", "{F}", "help", "config"],
        ["help", "config", "--env", "{F}"],
        ["help", "--env", "{F}", "config"],
        ["help", "--config", "{F}", "config"],
        ["--model-name", "from-flag", "help", "config", "--env", "{F}"],
        ["help", "config", "--env", "{F}", "--model-name", "from-flag"],
        ["help", "--model-name", "from-flag", "config", "--env", "{F}"],
    ],
)
def test_help_config_takes_env_and_key_flags_anywhere(tmp_path: Path, argv: list[str]) -> None:
    config = write_json(tmp_path / "my.json", {"top-k": 3})
    done = run_cli(*(str(config) if part == "{F}" else part for part in argv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    values = value_lines(done.stdout)
    assert values["top-k"] == f"3 (from {config})"
    if "--model-name" in argv:
        assert values["model-name"] == "from-flag (from --model-name)"


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_is_taken_before_or_after_help_config(tmp_path: Path, position: str) -> None:
    config = write_json(tmp_path / "my.json", {"top-k": 0})
    help_argv = ["help", "config", "--env", str(config)]
    argv = ["--debug", *help_argv] if position == "before" else [*help_argv, "--debug"]
    done = run_cli(*argv, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" in done.stderr  # --debug shows it


def test_a_misspelt_flag_after_help_config_is_still_named(tmp_path: Path) -> None:
    done = run_cli("help", "config", "--evn", "my.json", cwd=tmp_path)
    assert done.returncode == 2
    assert "unrecognized arguments: --evn my.json; did you mean --env?" in done.stderr
    assert run_cli("help", "config", "--top-kk", "3", cwd=tmp_path).stderr.count("--top-k?") == 1
    json_elsewhere = run_cli("help", "index", "--json", cwd=tmp_path)
    assert json_elsewhere.returncode == 2 and "'help config' only" in json_elsewhere.stderr


def test_each_value_and_where_it_came_from(tmp_path: Path) -> None:
    config = write_json(tmp_path / "my.json", {"top-k": 3, "batch-size": 5, "resize-width": 100})
    env = {"IMAGE_SEARCH_TOP_K": "4", "IMAGE_SEARCH_BATCH_SIZE": "6"}
    keys, values = help_config("--env", str(config), "--top-k", "7", cwd=tmp_path, env=env)

    default = Settings().to_dict()
    assert keys["top-k"] == {"value": 7, "source": "flag", "default": default["top-k"]}
    assert keys["batch-size"] == {"value": 6, "source": "environment", "default": None}
    assert keys["resize-width"] == {
        "value": 100,
        "source": "file",
        "default": default["resize-width"],
    }
    assert keys["resize-height"] == {
        "value": default["resize-height"],
        "source": "default",
        "default": default["resize-height"],
    }
    assert sorted(keys) == sorted(all_keys())
    assert values["top-k"] == "7 (from --top-k)"
    assert values["batch-size"] == "6 (from IMAGE_SEARCH_BATCH_SIZE)"
    assert values["resize-width"] == f"100 (from {config})"
    assert values["resize-height"] == f"{shown_default('resize-height')} (default)"
    assert sorted(values) == sorted(all_keys())


def test_config_json_in_the_working_folder_is_read_as_by_every_command(tmp_path: Path) -> None:
    keys, values = help_config(cwd=tmp_path)
    assert {entry["source"] for entry in keys.values()} == {"default"}
    assert keys["table-name"]["value"] == Settings().table_name
    write_json(tmp_path / "config.json", {"table-name": "holiday"})
    keys, values = help_config(cwd=tmp_path)
    assert keys["table-name"] == {"value": "holiday", "source": "file", "default": "images"}
    assert values["table-name"] == "holiday (from config.json)"


def test_a_default_says_what_unset_means(tmp_path: Path) -> None:
    _, values = help_config(cwd=tmp_path)
    for key in all_keys():
        assert values[key] == f"{shown_default(key)} (default)", key
    assert key_info("batch-size").shown_default in values["batch-size"]


def test_secrets_are_shown_as_set_never_their_values(tmp_path: Path) -> None:
    file_secret, env_secret, flag_secret = "s3cr3t-in-file", "s3cr3t-in-env", "s3cr3t-flag"
    config = write_json(tmp_path / "my.json", {"server-auth": f"alice:{file_secret}"})
    env = {"IMAGE_SEARCH_POSTGRES_PASSWORD": env_secret}
    keys, values = help_config("--env", str(config), cwd=tmp_path, env=env)
    assert keys["server-auth"] == {"value": "***", "source": "file", "default": None}
    assert keys["postgres-password"] == {"value": "***", "source": "environment", "default": None}
    assert values["server-auth"] == f"*** (from {config})"
    assert values["postgres-password"] == "*** (from IMAGE_SEARCH_POSTGRES_PASSWORD)"
    for extra in ([], ["--json"], ["--server-auth", f"bob:{flag_secret}"]):
        done = run_cli("help", "config", "--env", str(config), *extra, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        for secret in (file_secret, env_secret, flag_secret):
            assert secret not in done.stdout + done.stderr
    assert "(from --server-auth)" in done.stdout
    assert "`ps` shows it" in done.stderr  # the flag's own warning, as for every command


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{", "cannot read configuration file"),
        ('{"top-k": "ten"}', "'top-k' must be an integer"),
        ('{"tpo-k": 3}', "unknown configuration key 'tpo-k'"),
    ],
)
def test_a_bad_file_is_one_line_and_exit_2(tmp_path: Path, content: str, words: str) -> None:
    config = tmp_path / "my.json"
    config.write_text(content, encoding="utf-8")
    for extra in ([], ["--json"]):
        done = run_cli("help", "config", "--env", str(config), *extra, cwd=tmp_path)
        assert done.returncode == 2
        assert done.stdout == ""
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("image-search: error: ") and words in line
    missing = run_cli("help", "config", "--env", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 2 and "configuration file not found" in missing.stderr
