"""The command line's run: settings, services, the commands, exit codes and one-line error
messages. The parser is in cli_parser; everything else lives in the stages."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psycopg

from .cli_parser import build_parser, show_config, show_help
from .config import Settings, SourcedSettings, all_keys, attribute_of, load_sourced_settings
from .errors import ConfigError, ImageError, ImageSearchError, one_line
from .models import Embedder
from .models.base import require_torch
from .models.hub import check_hub_for
from .models.precision import Decision, decide_for
from .scan import display_path
from .store import Database, Store, redact

if TYPE_CHECKING:
    from .ingest import IndexReport

log = logging.getLogger("image_search")


def settings_from(args: argparse.Namespace) -> Settings:
    return sourced_settings_from(args).settings


def sourced_settings_from(args: argparse.Namespace) -> SourcedSettings:
    """The settings the command line asks for, and where each value came from."""
    flags = {key: getattr(args, attribute_of(key), None) for key in all_keys()}
    if flags["server-auth"]:
        log.warning(
            "--server-auth puts the page's password in the command line, where `ps` shows it "
            "to every user of this machine: set IMAGE_SEARCH_SERVER_AUTH or server-auth in "
            "the config file instead"
        )
    return load_sourced_settings(getattr(args, "env", None), flags)


def make_embedder(settings: Settings, decision: Decision) -> Embedder:
    return Embedder.from_settings(settings, decision)


@dataclass(frozen=True)
class Services:
    """What every command works with, built once in `main`: the settings (naming the backend
    and precision decided), the database (a pool shared by the index run, the searcher and
    the page), and the lazily loaded model, which carries the decision of backend, precision
    and device that every part asks."""

    settings: Settings
    database: Database
    embedder: Embedder

    @property
    def decision(self) -> Decision:
        return self.embedder.decision


def decision_for(settings: Settings, database: Database, reindex: bool = False) -> Decision:
    """Backend, precision and device, decided once for this command: with backend `auto`, a
    table that holds images keeps what filled it (unless it is being re-indexed), so that an
    upgrade never forces a re-index."""
    table = None
    if settings.backend == "auto" and not reindex:
        info = Store(database, settings.table_name).info()
        if info is not None and info.stored:
            table = info.spec
    return decide_for(settings, table)


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


def print_index_report(report: IndexReport, as_json: bool, stopped: bool = False) -> None:
    """The summary; of a run that was stopped, what it stored before (`"stopped": true`)."""
    if as_json:
        told = report.to_json() | ({"stopped": True} if stopped else {})
        print(json.dumps(told, ensure_ascii=False))
        return
    # Each skipped file was logged as a warning when the run met it: not listed again here.
    if stopped:
        print(f"Stopped: {report.summary()}; the next run does the rest.")
    else:
        print(f"Indexed: {report.summary()}")


def index_and_report(services: Services, as_json: bool, show_bars: bool, **options: Any) -> None:
    """One index run (`options` as run_index takes them) and its summary, printed also
    when Ctrl-C or SIGTERM stops it (then raised on)."""
    from .executor_choice import executor_for  # the index run's stack, for index runs only
    from .ingest import IndexReport, Progress, run_index

    progress = Progress(show_bars=show_bars)
    try:
        report = run_index(
            services.settings,
            services.embedder,
            services.database,
            progress=progress,
            executor=executor_for(services.settings),
            **options,
        )
    except KeyboardInterrupt:
        print_index_report(progress.report or IndexReport(), as_json, stopped=True)
        raise
    print_index_report(report, as_json)


def command_index(args: argparse.Namespace, services: Services) -> int:
    from .ingest import source_folder

    source = getattr(args, "source", None)
    show_bars = not args.json and not args.watch

    def index_once(first: bool = True) -> None:
        """One pass; what the flags ask to be done once (--reindex, --prune, --retry-failed)
        is done by the first pass of --watch only."""
        index_and_report(
            services,
            args.json,
            show_bars,
            source=source,
            keep_missing=args.keep_missing,
            reindex=first and args.reindex,
            prune=first and args.prune,
            retry_failed=first and args.retry_failed,
        )

    if not args.watch:
        index_once()
        return 0
    from .scan import Exclusions
    from .watch import FolderWatcher

    folder = Path(source_folder(services.settings, source))
    with FolderWatcher(folder, Exclusions.of(services.settings)) as watcher:
        index_once()
        print(f"Watching {folder} for changes (Ctrl-C to stop)", file=sys.stderr)
        try:
            while watcher.wait_for_changes():
                index_once(first=False)
        finally:  # Ctrl-C or SIGTERM: exit 130 or 143, as any command stopped so
            print("Stopped watching.", file=sys.stderr)
    return 0


NO_SUCH_FOLDER = "--under {folder}: no such folder (check the path, or mount the drive first)"


def check_request(args: argparse.Namespace, settings: Settings) -> None:
    """The query and filters of `search` and `duplicates`, checked before the database is
    started or the model loaded (a bad date is exit 2 at once) and kept on `args`."""
    from .duplicates import check_threshold
    from .query import Query, build_filters, missing_folders, parse_part

    if args.command not in ("search", "duplicates"):
        return
    roots = [settings.source_directory]
    if args.command == "duplicates":
        check_threshold(args.threshold)
        args.filters = build_filters(args.under, roots=roots)
    else:
        more = [parse_part(given, 1, "--and") for given in args.add]
        more += [parse_part(given, -1, "--not") for given in args.subtract]
        args.query = Query(
            args.image, args.text, args.like, args.text_weight, tuple(more), args.words
        )
        args.query.check()
        if args.image is not None and not args.image.is_file():
            raise ConfigError(f"--image {args.image}: no such file")
        args.filters = build_filters(
            args.under, args.taken_after, args.taken_before, args.min_score, roots=roots
        )
    if missing := missing_folders(args.filters):
        raise ConfigError(NO_SUCH_FOLDER.format(folder=display_path(missing[0])))


def command_search(args: argparse.Namespace, services: Services) -> int:
    from .query import describe_filters
    from .search import Searcher

    settings = services.settings
    searcher = Searcher(settings, Store(services.database, settings.table_name), services.embedder)
    try:
        result = searcher.search(args.query, filters=args.filters)
    except ImageError as exc:
        flag, path = ("--like", args.like) if args.like is not None else ("--image", args.image)
        raise ConfigError(f"cannot use {flag} {path}: {exc}") from exc
    for warning in result.warnings:  # on stderr, so that --json's output stays one object
        print(f"warning: {warning}", file=sys.stderr)
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

    status = status_of(services.settings, services.database, services.decision)
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
        return 0
    print("\n".join(status_lines(status)))
    return 0


def command_serve(args: argparse.Namespace, services: Services) -> int:
    return serve_until_stopped(args, services)


def command_run_all(args: argparse.Namespace, services: Services) -> int:
    """The seed's whole run: index source-directory, then serve the page and wait."""
    index_and_report(services, as_json=False, show_bars=True)
    return serve_until_stopped(args, services)


def serve_until_stopped(args: argparse.Namespace, services: Services) -> int:
    """The page until Ctrl-C (130) or SIGTERM, a service's normal end (0)."""
    from .web_launch import serve

    with suppress(Terminated):
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


class StderrHandler(logging.StreamHandler):
    """Log lines to sys.stderr as it is when each is written, where the progress bars go
    too, even when a caller of `main` has swapped it to capture what the run prints."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("image-search: %(levelname)s: %(message)s"))

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def configure_logging(debug: bool) -> None:
    root = logging.getLogger()
    if not any(isinstance(handler, StderrHandler) for handler in root.handlers):
        root.addHandler(StderrHandler())
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("image_search").setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:  # the libraries' advice and retries are for model authors, not photo folders
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        # The pool's own reconnect chatter: the store says "reconnecting" once per attempt.
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, docker stop, kill): unwind like Ctrl-C, so that everything is
    closed and the embedded PostgreSQL stopped, then exit 143 (0 for the page: serving
    ends that way)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """`image-search ARGV`: its exit code. Output piped to a reader that stops early (`| head`)
    ends the run quietly, as a tool stopped by SIGPIPE does, not with a traceback."""
    try:
        code = run_command(argv)
        sys.stdout.flush()  # a reader gone is met here rather than at the interpreter's exit
        return code
    except BrokenPipeError:
        # Closed (its unwritten rest dropped with the failed flush), so that the interpreter's
        # exit does not try to write it again.
        with suppress(OSError, ValueError):
            sys.stdout.close()
        return 128 + signal.SIGPIPE


def run_command(argv: Sequence[str] | None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "help" and args.topic != "config":
        return show_help(parser, args.topic, args.json)
    debug = getattr(args, "debug", False) or bool(os.environ.get("IMAGE_SEARCH_DEBUG"))
    configure_logging(debug)
    settings: Settings | None = None
    try:
        if args.command == "help":  # the keys with their values: loaded as any command's
            return show_config(sourced_settings_from(args), args.json)
        settings = settings_from(args)
        check_request(args, settings)
        check_before_starting(args, settings)
        with Database(settings) as database:
            reindex = getattr(args, "reindex", False)
            decision = decision_for(settings, database, reindex)
            settings = decision.applied_to(settings)
            services = Services(settings, database, make_embedder(settings, decision))
            return COMMANDS[args.command](args, services)
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:  # main's to handle: not a failure of the run
        raise
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
