"""Argument parsing, exit codes and one-line error messages. Everything else lives in the stages."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import textwrap
import traceback
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg

from . import __version__
from .config import (
    Settings,
    all_keys,
    attribute_of,
    did_you_mean,
    key_info,
    key_kind,
    load_settings,
    shown_default,
)
from .duplicates import DEFAULT_THRESHOLD
from .errors import ConfigError, ImageError, ImageSearchError, one_line
from .executors import executor_for
from .ingest import IndexReport, Progress, run_index, source_folder
from .models import Embedder
from .models.base import require_torch
from .models.hub import check_hub_for
from .models.precision import CONFIGURED, settings_for_backend
from .scan import display_path
from .search import DEFAULT_TEXT_WEIGHT
from .store import Database, Store, redact

log = logging.getLogger("image_search")

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
    index.add_argument(
        "--keep-missing",
        action="store_true",
        help="keep rows of files that have disappeared from the folder",
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
        "help", help="help on a command, or on the configuration keys ('help config')"
    )
    helper.add_argument("topic", nargs="?", metavar="config|COMMAND")
    _add_serve_options(parser)
    parser.command_parsers = dict(commands.choices)  # for `image-search help COMMAND`
    return parser


def _add_query_options(search: argparse.ArgumentParser) -> None:
    query = search.add_argument_group(
        "query (--image, --text, both, or --like; plus any --and and --not parts)"
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


def config_help() -> str:
    """`image-search help config`: every key, where it can be set, what it means."""
    lines = [
        "Configuration keys. Set each in the JSON file (--env, default config.json) as",
        '"key": value, as an environment variable IMAGE_SEARCH_<KEY> (upper case, - as _), or',
        "as a flag --key VALUE on any command. A flag beats the environment, which beats the",
        "file, which beats the default.",
        "",
    ]
    width = max(map(len, all_keys()))
    columns = min(max(shutil.get_terminal_size().columns, 60), 100)
    for key in all_keys():
        lines += textwrap.wrap(
            key_help(key),
            columns,
            initial_indent=f"  {key:<{width}}  ",
            subsequent_indent=" " * (width + 4),
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def show_help(parser: Parser, topic: str | None) -> int:
    if topic == "config":
        print(config_help())
        return 0
    if topic is None:
        parser.print_help()
        return 0
    commands = getattr(parser, "command_parsers", {})
    if topic not in commands:
        parser.error(f"no help on '{topic}': try 'help config' or one of {', '.join(commands)}")
    commands[topic].print_help()
    return 0


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {key: getattr(args, attribute_of(key), None) for key in all_keys()}
    if flags["server-auth"]:
        log.warning(
            "--server-auth puts the page's password in the command line, where `ps` shows it "
            "to every user of this machine: set IMAGE_SEARCH_SERVER_AUTH or server-auth in "
            "the config file instead"
        )
    return load_settings(getattr(args, "env", None), flags)


def make_embedder(settings: Settings) -> Embedder:
    return Embedder.from_settings(settings)


@dataclass(frozen=True)
class Services:
    """What every command works with, built once in `main`: the settings (backend `auto`
    resolved), the database (a pool shared by the index run, the searcher and the page), the
    lazily loaded model, and why that backend was chosen."""

    settings: Settings
    database: Database
    embedder: Embedder
    backend_reason: str = CONFIGURED


def settings_for_table(
    settings: Settings, database: Database, reindex: bool = False
) -> tuple[Settings, str]:
    """Backend `auto` resolved: a table that holds images keeps what filled it (unless it is
    being re-indexed), so that an upgrade never forces a re-index."""
    table = None
    if settings.backend == "auto" and not reindex:
        info = Store(database, settings.table_name).info()
        if info is not None and info.images:
            table = (info.spec.backend, info.spec.precision)
    return settings_for_backend(settings, table)


def check_before_starting(args: argparse.Namespace, settings: Settings) -> None:
    """What can fail fast, checked before the database starts or the folder is scanned: a
    port in use, backend torch without its extra, and a model hub that cannot be reached
    for a model not cached here."""
    if args.command in ("serve", None):
        check_port_free(args.host, args.port)
    if args.command in ("index", "serve", None):  # those that may load the model
        if settings.backend == "torch":
            require_torch("backend torch")
        check_hub_for(settings.model_name)  # a search checks it when it loads the model


def check_port_free(host: str, port: int) -> None:
    """One line naming --port when something already listens there."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind((host, port))
    except OSError as exc:
        raise ImageSearchError(
            f"cannot serve on {host}:{port}: {one_line(exc)} (another image-search?). "
            "Choose another port with --port"
        ) from None


# ---------------------------------------------------------------- commands


def print_index_report(report: IndexReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
        return
    # Each skipped file was logged as a warning when the run met it: not listed again here.
    print(f"Indexed: {report.summary()}")


def command_index(args: argparse.Namespace, services: Services) -> int:
    source = getattr(args, "source", None)
    show_bars = not args.json and not args.watch

    def index_once(reindex: bool = False) -> None:
        report = run_index(
            services.settings,
            services.embedder,
            services.database,
            source=source,
            keep_missing=args.keep_missing,
            reindex=reindex,
            progress=Progress(show_bars=show_bars),
            executor=executor_for(services.settings),
        )
        print_index_report(report, args.json)

    if not args.watch:
        index_once(args.reindex)
        return 0
    from .watch import FolderWatcher

    folder = Path(source_folder(services.settings, source))
    with FolderWatcher(folder) as watcher:
        index_once(args.reindex)
        print(f"Watching {folder} for changes (Ctrl-C to stop)", file=sys.stderr)
        try:
            while watcher.wait_for_changes():
                index_once()
        except KeyboardInterrupt:
            pass
    print("Stopped watching.", file=sys.stderr)
    return 0


def check_request(args: argparse.Namespace, settings: Settings) -> None:
    """The query and filters of `search` and `duplicates`, checked before the database is
    started or the model loaded (a bad date is exit 2 at once) and kept on `args`."""
    from .duplicates import check_threshold
    from .search import Query, build_filters, missing_folders, parse_part

    if args.command not in ("search", "duplicates"):
        return
    roots = [settings.source_directory]
    if args.command == "duplicates":
        check_threshold(args.threshold)
        args.filters = build_filters(args.under, roots=roots)
    else:
        more = [parse_part(given, 1, "--and") for given in args.add]
        more += [parse_part(given, -1, "--not") for given in args.subtract]
        args.query = Query(args.image, args.text, args.like, args.text_weight, tuple(more))
        args.query.check()
        if args.image is not None and not args.image.is_file():
            raise ConfigError(f"--image {args.image}: no such file")
        args.filters = build_filters(
            args.under, args.taken_after, args.taken_before, args.min_score, roots=roots
        )
    for folder in missing_folders(args.filters):
        log.warning(
            "--under %s: no such folder (only images indexed from it earlier can match)",
            display_path(folder),
        )


def command_search(args: argparse.Namespace, services: Services) -> int:
    from .search import Searcher, describe_filters

    settings = services.settings
    searcher = Searcher(settings, Store(services.database, settings.table_name), services.embedder)
    try:
        result = searcher.search(args.query, filters=args.filters)
    except ImageError as exc:
        flag, path = ("--like", args.like) if args.like is not None else ("--image", args.image)
        raise ConfigError(f"cannot use {flag} {path}: {exc}") from exc
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return 0
    saved = f" Results in {result.output_dir}" if result.output_dir else ""
    described = describe_filters(args.filters)
    among = f" ({described})" if described else ""
    print(f"Searched {result.searched} images for {result.description}{among}.{saved}")
    for match in result.results:
        print(f"{match.rank:>3}  {match.score:.4f}  {display_path(match.file_path)}")
    if not result.results:
        print("No stored image passes these filters.")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def command_duplicates(args: argparse.Namespace, services: Services) -> int:
    from .duplicates import find_duplicates, report_lines

    store = Store(services.database, services.settings.table_name)
    report = find_duplicates(store, args.threshold, args.filters, chain=args.chain)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        print("\n".join(report_lines(report)))
    return 0


def command_status(args: argparse.Namespace, services: Services) -> int:
    from .status import status_lines, status_of

    status = status_of(services.settings, services.database, services.backend_reason)
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
        return 0
    print("\n".join(status_lines(status)))
    return 0


def command_serve(args: argparse.Namespace, services: Services) -> int:
    from .web import serve

    serve(services.settings, services.embedder, services.database, args.host, args.port)
    return 0


def command_run_all(args: argparse.Namespace, services: Services) -> int:
    """The seed's whole run: index source-directory, then serve the page and wait."""
    from .web import serve

    report = run_index(
        services.settings,
        services.embedder,
        services.database,
        progress=Progress(show_bars=True),
        executor=executor_for(services.settings),
    )
    print_index_report(report, as_json=False)
    serve(services.settings, services.embedder, services.database, args.host, args.port)
    return 0


COMMANDS = {
    "index": command_index,
    "search": command_search,
    "duplicates": command_duplicates,
    "serve": command_serve,
    "status": command_status,
    None: command_run_all,
}


def configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="image-search: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("image_search").setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:  # the libraries' advice and retries are for model authors, not photo folders
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        # The pool's own reconnect chatter: the store says "reconnecting" once per attempt.
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, docker stop, kill): unwind like Ctrl-C, so that everything is
    closed and the embedded PostgreSQL stopped, then exit 0."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "help":
        return show_help(parser, args.topic)
    debug = getattr(args, "debug", False) or bool(os.environ.get("IMAGE_SEARCH_DEBUG"))
    configure_logging(debug)
    settings: Settings | None = None
    try:
        settings = settings_from(args)
        check_request(args, settings)
        check_before_starting(args, settings)
        with Database(settings) as database:
            reindex = getattr(args, "reindex", False)
            settings, reason = settings_for_table(settings, database, reindex)
            services = Services(settings, database, make_embedder(settings), reason)
            return COMMANDS[args.command](args, services)
    except Terminated:
        return 0
    except KeyboardInterrupt:
        return 130
    except ImageSearchError as exc:
        return _fail(str(exc), exc.exit_code, settings, debug)
    except psycopg.Error as exc:  # outside the store's own handling (it should not happen)
        return _fail(f"database error: {one_line(exc)}", 1, settings, debug)
    except Exception as exc:  # a bug or an unforeseen fault: still one line, no traceback
        message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"
        return _fail(message, 1, settings, debug)


def _fail(message: str, code: int, settings: Settings | None, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    text = redact(message, settings) if settings else message
    print(f"image-search: error: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
