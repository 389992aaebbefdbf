"""The command line's parser: its commands and flags, every configuration key as a flag of every
command (its help from the Settings field), usage errors as one line with the nearest known
name, and `image-search help config`."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import textwrap
from collections.abc import Collection
from pathlib import Path
from typing import NoReturn

from . import __version__
from .config import (
    DEFAULT_CONFIG_FILE,
    REDACTED,
    Settings,
    SourcedSettings,
    all_keys,
    attribute_of,
    did_you_mean,
    environment_variable,
    key_info,
    key_kind,
    shown_default,
    shown_value,
)
from .duplicates import DEFAULT_THRESHOLD
from .query import DEFAULT_TEXT_WEIGHT

KEYS_POINTER = (
    "Every configuration key is also a flag of every command (--model-name, --table-name, "
    "...): 'image-search help config' lists them."
)


class Parser(argparse.ArgumentParser):
    """Usage errors as the one line that matters, the nearest known flag or command to a
    mistyped one, and a pointer to --help, not the usage."""

    def error(self, message: str) -> NoReturn:
        hint = self._nearest(message)
        self.exit(2, f"{self.prog}: error: {message}{hint}\nSee '{self.prog} --help'.\n")

    def _nearest(self, message: str) -> str:
        commands = getattr(self, "command_parsers", {})
        if choice := re.search(r"invalid choice: '([^']*)'", message):
            return did_you_mean(choice[1], commands)
        if unknown := re.search(r"unrecognized arguments: (\S+)", message):
            parsers = [self, *commands.values()]
            flags = {flag for parser in parsers for flag in parser._option_string_actions}
            return did_you_mean(unknown[1].partition("=")[0], sorted(flags))
        return ""


def _common_options(shown: Collection[str] = ()) -> argparse.ArgumentParser:
    """Options every command takes; defaults suppressed so that a flag given before or
    after the command name both count. Configuration keys are accepted everywhere but listed
    in one place (`image-search help config`), except those in `shown`."""
    common = Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--env",
        "--config",
        dest="env",
        metavar="PATH",
        type=Path,
        help="JSON configuration file (default: config.json)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    for key in all_keys():
        common.add_argument(
            f"--{key}",
            dest=attribute_of(key),
            metavar=_metavar(key),
            help=key_help(key) if key in shown else argparse.SUPPRESS,
        )
        for alias in key_info(key).aliases:  # one option, one name in the help
            common.add_argument(alias, dest=attribute_of(key), help=argparse.SUPPRESS)
    return common


def _metavar(key: str) -> str:
    if key_info(key).metavar:
        return key_info(key).metavar
    return "BOOL" if key_kind(key) is bool else key.split("-")[-1].upper()


def key_help(key: str) -> str:
    """One key's help from its Settings field: what it is, its default, the values it takes
    (true or false for a switch) and its short flag, if any."""
    info = key_info(key)
    values = [f"{value} ({note})" if note else value for value, note in info.choices.items()]
    if key_kind(key) is bool:
        values = ["true", "false"]
    listed = f": {', '.join(values[:-1])} or {values[-1]}" if values else ""
    short = "".join(f"; {alias} for short" for alias in info.aliases)
    return f"{info.help} (default: {shown_default(key)}){listed}{short}"


def build_parser() -> Parser:
    common = _common_options()
    serving = _common_options(shown={"server-auth"})
    parser = Parser(
        prog="image-search",
        parents=[serving],
        description="Find the images in your folder most like a given image or text. With no "
        "command: index source-directory, then serve the web page.",
        epilog=f"{KEYS_POINTER} Exit codes: 0 success, 1 failure at run time, 2 bad usage or "
        "configuration.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    index = commands.add_parser(
        "index", parents=[common], help="index the source folder", epilog=KEYS_POINTER
    )
    index.add_argument(
        "--source", type=Path, metavar="DIR", help="index this folder instead of source-directory"
    )
    missing = index.add_mutually_exclusive_group()
    missing.add_argument(
        "--keep-missing",
        action="store_true",
        help="keep the rows of missing files however long they stay missing (searches leave "
        "them out until they are back); by default they go after missing-grace-days",
    )
    missing.add_argument(
        "--prune",
        action="store_true",
        help="remove the rows of missing files now, without waiting for missing-grace-days",
    )
    index.add_argument(
        "--retry-failed",
        action="store_true",
        help="try again every file that failed before, even unchanged and for the same cause",
    )
    index.add_argument(
        "--reindex",
        action="store_true",
        help="embed every image again with the configured model (after changing "
        "model-name or dimension); the old vectors stay searchable until it ends",
    )
    index.add_argument(
        "--watch",
        action="store_true",
        help="keep running and index files as they appear, change or disappear",
    )
    index.add_argument("--json", action="store_true", help="print the summary as JSON")

    search = commands.add_parser(
        "search",
        parents=[common],
        help="search by image, text, both, or like a stored image",
        epilog=KEYS_POINTER,
    )
    _add_query_options(search)
    search.add_argument("--json", action="store_true", help="print the results as JSON")

    _add_duplicates_command(commands, common)

    serve = commands.add_parser(
        "serve", parents=[serving], help="serve the web page only", epilog=KEYS_POINTER
    )
    _add_serve_options(serve)

    status = commands.add_parser(
        "status", parents=[common], help="show what is indexed", epilog=KEYS_POINTER
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    helper = commands.add_parser(
        "help",
        parents=[common],
        help="help on a command, or on the configuration keys and their values here "
        "('help config')",
        epilog="'help config' shows each key's value as a command run here would use it, "
        "and where that value comes from: give it the command's --env and key flags.",
    )
    helper.add_argument(
        "topic",
        nargs="?",
        metavar="config|COMMAND",
        help="'config': the configuration keys and their values; a command: its options",
    )
    helper.add_argument(
        "--json",
        action="store_true",
        help="with 'config': print {key: {value, source, default}} as JSON",
    )
    _add_serve_options(parser)
    parser.command_parsers = dict(commands.choices)  # for `image-search help COMMAND`
    return parser


def _add_query_options(search: argparse.ArgumentParser) -> None:
    query = search.add_argument_group(
        "query (--image, --text, both, or --like; plus any --and and --not parts; --words "
        "alone or with any of them)"
    )
    query.add_argument("--image", type=Path, metavar="FILE", help="query image")
    query.add_argument("--text", metavar="QUERY", help="query text")
    query.add_argument(
        "--like",
        metavar="FILE",
        help="images like this file: an indexed file is searched by its stored vector "
        "(no model needed); any other file is embedded as with --image",
    )
    query.add_argument(
        "--words",
        metavar="WORDS",
        help="photos whose text holds these words (read by OCR when indexing): case, accents "
        "and spaces aside, a character misread forgiven in longer words; alone, or ranked "
        "together with the other parts",
    )
    query.add_argument(
        "--text-weight",
        type=float,
        default=DEFAULT_TEXT_WEIGHT,
        metavar="W",
        help="with --image and --text: the text's share of the query, 0 to 1 "
        f"(default: {DEFAULT_TEXT_WEIGHT})",
    )
    for flag, dest, verb in (("--and", "add", "add"), ("--not", "subtract", "subtract")):
        query.add_argument(
            flag,
            dest=dest,
            action="append",
            default=[],
            metavar="[W:]TEXT|FILE",
            help=f"{verb} a part (repeatable): a file that exists (an indexed one by its stored "
            "vector), else a text; W: gives it a weight (default 1), as in 0.5:'at night'",
        )
    filters = search.add_argument_group("filters")
    _add_under_option(filters, "only files under this folder (repeat for several)")
    filters.add_argument(
        "--taken-after",
        metavar="DATE",
        help="taken on or after DATE (2024, 2024-05, 2024-05-31 or 2024-05-31T18:30); the "
        "capture date is EXIF DateTimeOriginal, else the file's modification time",
    )
    filters.add_argument("--taken-before", metavar="DATE", help="taken before DATE")
    filters.add_argument(
        "--min-score", type=float, metavar="S", help="only results with a score of at least S"
    )


def _add_under_option(parser: argparse._ActionsContainer, text: str) -> None:
    parser.add_argument(
        "--under", action="append", default=[], type=Path, metavar="DIR", help=text
    )


def _add_duplicates_command(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    duplicates = commands.add_parser(
        "duplicates",
        parents=[common],
        help="list groups of near-identical images (never deletes anything)",
        description="List groups of near-identical images: copies, resized or re-encoded "
        "copies, burst shots. The first of each group is the one to keep (most pixels, then "
        "oldest). Nothing is deleted or moved.",
    )
    duplicates.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="T",
        help=f"how alike two images must be, cosine similarity 0 to 1 (default: "
        f"{DEFAULT_THRESHOLD})",
    )
    _add_under_option(duplicates, "only images under this folder (repeat for several)")
    duplicates.add_argument(
        "--chain",
        action="store_true",
        help="keep chains of alike images whole (bursts): a member may then be less alike "
        "to the one to keep than T; by default every member is at least T alike to it",
    )
    duplicates.add_argument("--json", action="store_true", help="print the groups as JSON")


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this computer only)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")


def config_help(sourced: SourcedSettings | None = None) -> str:
    """`image-search help config`: every key, where it can be set, what it means; with
    `sourced`, each key's value and where it came from, secrets as ***."""
    lines = [
        "Configuration keys. Set each in the JSON file (--env, default config.json) as",
        '"key": value, as an environment variable IMAGE_SEARCH_<KEY> (upper case, - as _), or',
        "as a flag --key VALUE on any command. A flag beats the environment, which beats the",
        "file, which beats the default.",
        "",
    ]
    columns = min(max(shutil.get_terminal_size().columns, 60), 100)
    if sourced is not None:
        read = sourced.file or f"none ({DEFAULT_CONFIG_FILE} is not here)"
        lines += textwrap.wrap(
            "Under each key: its value in a command run here with the same --env and flags, "
            f"and where that value comes from. Configuration file: {read}. Secrets show as "
            f"{REDACTED}.",
            columns,
        )
        lines.append("")
    width = max(map(len, all_keys()))
    values = sourced.settings.redacted() if sourced is not None else {}
    for key in all_keys():
        entry = [key_help(key)]
        if sourced is not None:
            entry.append(f"value: {shown_value(key, values[key])} ({origin(key, sourced)})")
        for number, text in enumerate(entry):
            lines += textwrap.wrap(
                text,
                columns,
                initial_indent=f"  {key:<{width}}  " if number == 0 else " " * (width + 4),
                subsequent_indent=" " * (width + 4),
                break_long_words=False,
                break_on_hyphens=False,
            )
    return "\n".join(lines)


def origin(key: str, sourced: SourcedSettings) -> str:
    """Where a key's value came from, named: the default, the file, the variable, the flag."""
    source = sourced.sources[key]
    if source == "file":
        return f"from {sourced.file}"
    if source == "environment":
        return f"from {environment_variable(key)}"
    if source == "flag":
        return f"from --{key}"
    return "default"


def config_json(sourced: SourcedSettings) -> str:
    """`help config --json`: {key: {value, source, default}}, secrets as ***."""
    values, defaults = sourced.settings.redacted(), Settings().redacted()
    return json.dumps(
        {
            key: {"value": values[key], "source": sourced.sources[key], "default": defaults[key]}
            for key in all_keys()
        },
        ensure_ascii=False,
    )


def show_help(parser: Parser, topic: str | None, as_json: bool = False) -> int:
    """`image-search help [COMMAND]`; `help config` is shown by `show_config`."""
    if as_json:
        parser.error("--json goes with 'help config' only")
    if topic is None:
        parser.print_help()
        return 0
    commands = getattr(parser, "command_parsers", {})
    if topic not in commands:
        parser.error(f"no help on '{topic}': try 'help config' or one of {', '.join(commands)}")
    commands[topic].print_help()
    return 0


def show_config(sourced: SourcedSettings, as_json: bool) -> int:
    print(config_json(sourced) if as_json else config_help(sourced))
    return 0
