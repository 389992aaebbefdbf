"""One typed settings object, read from defaults < JSON file < IMAGE_SEARCH_* env < flags."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import NoneType
from typing import Any

from .batch_sizes import CPU_BATCH_SIZE, GPU_LARGE_BATCH_SIZE, GPU_SMALL_BATCH_SIZE
from .errors import ConfigError

DEFAULT_CONFIG_FILE = Path("config.json")
ENV_PREFIX = "IMAGE_SEARCH_"
REDACTED = "***"
SECRET_KEYS = ("postgres-password", "server-auth")
# IMAGE_SEARCH_* variables that are switches of their own, not configuration keys: --debug,
# and the opt-in test with real model weights (tests/test_real_models.py).
NOT_KEYS = (ENV_PREFIX + "DEBUG", ENV_PREFIX + "REAL_MODEL")
# The ray-address that starts a private Ray instance on this machine for the run.
LOCAL_RAY = "local"
# How a boolean key may be written in the environment or on the command line.
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
# Folders that NAS and operating systems write inside shared folders, beside the photos: thumbnails
# (every photo again, several times), recycle bins, snapshots, salvage. Left out of every scan
# unless exclude-system-folders is false; names compare without case, as on an SMB share.
SYSTEM_FOLDERS = (
    "@eaDir",  # Synology: thumbnails and metadata of each file
    "#recycle",  # Synology: recycle bin
    "#snapshot",  # Synology: snapshots made visible
    "@Recycle",  # QNAP: network recycle bin
    "@Recently-Snapshot",  # QNAP: snapshots
    ".@__thumb",  # QNAP, Asustor: thumbnails (hidden anyway)
    "~snapshot",  # NetApp and others: snapshots as Windows clients see them
    "$RECYCLE.BIN",  # Windows: recycle bin of a drive
    "RECYCLER",  # Windows XP: the same
    "System Volume Information",  # Windows: restore points, indexing
    "lost+found",  # ext file systems: what fsck salvaged
    "__MACOSX",  # a zip made on a Mac, unpacked: resource forks
)
# How a list key is written in the environment or on the command line: items between commas.
LIST_SEPARATOR = ","
# Lower-case identifiers only: a table name is an SQL identifier, never free text.
TABLE_NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# The names of image-search's own tables (the meta table, failed files, the shadow tables of
# re-index runs) start with this; no table-name may.
RESERVED_TABLE_PREFIX = "image_search_"
# max-file-mb: a 200-megapixel RAW file (16-bit sensor data) is about 400 MB.
DEFAULT_MAX_FILE_MB = 1024


class Secret(str):
    """A secret key's value (postgres-password, server-auth): the text itself wherever the
    code uses it, "***" in a repr (so never in a log line or an error that shows settings),
    and pickled without it: what unpickles it (a Ray worker) reads it from its own
    environment, IMAGE_SEARCH_<KEY>, where the driver puts it for the run
    (worker_environment) or an operator does."""

    variable: str

    def __new__(cls, value: str, variable: str) -> Secret:
        secret = super().__new__(cls, value)
        secret.variable = variable
        return secret

    def __repr__(self) -> str:
        return repr(REDACTED)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (secret_from_environment, (self.variable,))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: Any) -> Secret:
        return self


def secret_from_environment(variable: str) -> Secret | None:
    """A secret as a process that unpickled settings finds it: in its environment, or None."""
    value = os.environ.get(variable)
    return Secret(value, variable) if value else None


def environment_variable(key: str) -> str:
    """IMAGE_SEARCH_<KEY>: the environment variable of a key."""
    return ENV_PREFIX + attribute_of(key).upper()


@dataclass(frozen=True)
class KeyInfo:
    """What the help, the flags and the validation say of one key; kept on its Settings field.

    `choices`: the only values the key takes, each with a note for the help ("" for none).
    `shown_default`: words for a default that its value does not say (batch-size's None).
    `positive`: an integer that must be above 0. `metavar`, `aliases`: of the key's flag."""

    help: str
    choices: Mapping[str, str]
    shown_default: str | None
    positive: bool
    metavar: str | None
    aliases: tuple[str, ...]


def key_field(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | Mapping[str, str] = (),
    shown_default: str | None = None,
    positive: bool = False,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A Settings field carrying its key's KeyInfo."""
    notes = dict(choices) if isinstance(choices, Mapping) else dict.fromkeys(choices, "")
    info = KeyInfo(help, notes, shown_default, positive, metavar, aliases)
    return field(default=default, metadata={"key": info})


@dataclass(frozen=True)
class Settings:
    """Every configuration key, with its help. Attribute `a_b` is the key `a-b`."""

    source_directory: Path = key_field(Path("images"), "folder of images to index")
    output_directory: Path = key_field(Path("output"), "where result folders are written")
    device: str = key_field("auto", "where the model runs", choices=("auto", "cpu", "cuda", "mps"))
    model_name: str = key_field("jinaai/jina-clip-v2", "Hugging Face model id or local folder")
    dimension: int = key_field(
        1024,
        "vector size stored; Matryoshka-cut if smaller than the model's",
        positive=True,
    )
    resize_width: int = key_field(960, "width of the processed JPEG", positive=True)
    resize_height: int = key_field(540, "height of the processed JPEG", positive=True)
    resize_mode: str = key_field(
        "fit",
        "how an image takes the processed JPEG's size",
        choices={"fit": "keeps the aspect ratio, never enlarges", "stretch": "the exact size"},
    )
    postgres_host: str | None = key_field(
        None, "PostgreSQL server host; unset: the embedded database"
    )
    postgres_port: int = key_field(5432, "PostgreSQL server port")
    postgres_user: str = key_field("postgres", "PostgreSQL user")
    postgres_password: str | None = key_field(
        None, "PostgreSQL password, best given as IMAGE_SEARCH_POSTGRES_PASSWORD"
    )
    postgres_database: str = key_field("postgres", "PostgreSQL database")
    data_directory: Path = key_field(
        Path(".image-search"), "processed JPEGs and the embedded database"
    )
    table_name: str = key_field(
        "images", "table holding the vectors; lower-case letters, digits and _"
    )
    top_k: int = key_field(10, "how many results a search returns", positive=True)
    batch_size: int | None = key_field(
        None,
        "images per model batch and per database transaction",
        # None: the executor chooses from these (executor_local.batch_size_for).
        shown_default=f"{CPU_BATCH_SIZE} on the CPU; by free memory on a GPU "
        f"({GPU_SMALL_BATCH_SIZE}-{GPU_LARGE_BATCH_SIZE})",
        positive=True,
    )
    # Above a 200-megapixel phone's 16320x12240, and with room to spare below 1 GB of memory
    # for the largest image of any format it lets in (BENCHMARKS.md, u).
    max_image_pixels: int = key_field(
        210_000_000,
        "larger images are refused before decoding (decompression bombs); counted in 8-bit "
        "RGB pixels: an image whose decoding takes more memory a pixel (AVIF, JPEG XL, HEIC, "
        "a RAW file's sensor data) counts for more; the default takes a 200-megapixel phone "
        "photo",
        positive=True,
    )
    max_file_mb: int = key_field(
        DEFAULT_MAX_FILE_MB,
        "larger files are skipped unread; the default takes a 200-megapixel camera RAW",
        positive=True,
        metavar="MB",
    )
    memory_budget_mb: int | None = key_field(
        None,
        "memory that decoding images may take at once: the index run's threads and the "
        "page's queries together (an image larger than all of it is decoded alone)",
        shown_default="a quarter of this computer's memory, or of its container's limit",
        positive=True,
        metavar="MB",
    )
    # A RAW file and a JPEG (or HEIC) of the same name in one folder: index the JPEG only (one
    # row per shot, the camera's own rendering; rclip does the same), the RAW only, or both.
    raw_with_jpeg: str = key_field(
        "skip-raw",
        "a RAW file beside a JPEG/HEIC of the same name",
        choices={
            "skip-raw": "index the JPEG: one row per shot",
            "skip-jpeg": "index the RAW",
            "both": "",
        },
    )
    # On by default: what it adds to an index run is in BENCHMARKS.md, section t.
    ocr: bool = key_field(
        True,
        "read the words in each photo when indexing (OCR), for search --words; photos indexed "
        "before get theirs at the next index run; false: no words are read",
    )
    ocr_recogniser: Path | None = key_field(
        None,
        "an ONNX text recogniser to read words with instead of the bundled Chinese + English "
        "one (PaddleOCR's Japanese or Korean, say; its alphabet in the graph or in a .txt of "
        "the same name beside it)",
        metavar="FILE",
    )
    exclude: tuple[str, ...] = key_field(
        (),
        "more to leave out of the scan: glob patterns of folder or file names (Private, "
        "*-edited.jpg) or, with a /, of paths under source-directory (2019/raw/*); a list in "
        "the file, comma-separated in the environment or a flag",
        metavar="PATTERNS",
    )
    exclude_system_folders: bool = key_field(
        True,
        "leave out the folders NAS and operating systems write beside photos ("
        + ", ".join(SYSTEM_FOLDERS)
        + "); false indexes them unless exclude names them",
    )
    missing_grace_days: int = key_field(
        30,
        "days a stored file may stay missing (a share not mounted) before index removes its "
        "row; searches leave it out at once, and index --prune removes it now",
        positive=True,
    )
    vector_type: str = key_field(
        "vector",
        "how vectors are stored; changing it needs index --reindex",
        choices={"vector": "float32", "halfvec": "float16: half the space"},
    )
    server_auth: str | None = key_field(
        None,
        "user:password protecting the web page; prefer IMAGE_SEARCH_SERVER_AUTH or the config "
        "file to the flag, which `ps` shows to every user of this machine",
        metavar="USER:PASSWORD",
        aliases=("--auth",),
    )
    trust_remote_code: bool = key_field(
        True, "may a model that brings its own code run it; the default model needs it"
    )
    save_results: bool = key_field(True, "write a result folder for each search")
    keep_results: int | None = key_field(
        None,
        "how many result folders to keep, the newest: after each search older ones that "
        "image-search wrote in output-directory are deleted; unset: keep all",
        positive=True,
    )
    min_free_mb: int = key_field(
        500,
        "megabytes to leave free on output-directory's file system: with less, a search "
        "answers but writes no result folder (and says so)",
        positive=True,
    )
    page_cache_mb: int = key_field(
        1000,
        "megabytes the page's cache of uploads and served copies may take; the oldest go "
        "first, never a file a page still shows",
        positive=True,
    )
    backend: str = key_field(
        "auto",
        "which library runs the model",
        choices={
            "auto": "a filled table keeps its backend; else onnx on the CPU, torch on a GPU "
            "when installed",
            "onnx": "ONNX Runtime",
            "torch": "PyTorch; needs image-search[torch]",
        },
    )
    precision: str = key_field(
        "auto",
        "the model's arithmetic; vectors are always stored as vector-type says",
        choices={
            "auto": "by backend and device",
            "fp32": "",
            "bf16": "torch only",
            "fp16": "",
            "int8": "onnx only",
        },
    )
    ray_address: str | None = key_field(
        None,
        "Ray cluster to index on: local (a private Ray instance), auto, HOST:PORT or "
        "ray://HOST:10001; unset: in this process; needs image-search[cluster]",
    )

    def __post_init__(self) -> None:
        for key in SECRET_KEYS:  # however the settings were made: a file, a test, replace()
            value = getattr(self, attribute_of(key))
            if value is not None and not isinstance(value, Secret):
                secret = Secret(value, environment_variable(key))
                object.__setattr__(self, attribute_of(key), secret)

    @property
    def embedded_database(self) -> bool:
        return not self.postgres_host

    @property
    def processed_directory(self) -> Path:
        return self.data_directory / "processed"

    def to_dict(self) -> dict[str, Any]:
        """The settings under their key names, paths as strings."""
        return {key_of(f.name): _jsonable(getattr(self, f.name)) for f in fields(self)}

    def redacted(self) -> dict[str, Any]:
        """`to_dict()` with every secret replaced by "***": safe to write or show."""
        values = self.to_dict()
        for key in SECRET_KEYS:  # "***" where a secret is set; null where none is
            if values[key] is not None:
                values[key] = REDACTED
        return values


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment a Ray worker needs for the secrets its pickled settings leave out:
    the database password (the page's login is no worker's business). Never a command line
    (`ps` shows those to every user), nor Ray's runtime_env, which ends up in one."""
    password = settings.postgres_password
    return {environment_variable("postgres-password"): str(password)} if password else {}


def key_of(attribute: str) -> str:
    return attribute.replace("_", "-")


def attribute_of(key: str) -> str:
    return key.replace("-", "_")


def all_keys() -> list[str]:
    return [key_of(f.name) for f in fields(Settings)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def _field(key: str) -> dataclasses.Field[Any]:
    return {f.name: f for f in fields(Settings)}[attribute_of(key)]


def key_info(key: str) -> KeyInfo:
    return _field(key).metadata["key"]


def shown_default(key: str) -> str:
    """The default as the help and README say it: unset, true/false, or the value."""
    info = key_info(key)
    if info.shown_default is not None:
        return info.shown_default
    return shown_value(key, _field(key).default)


def shown_value(key: str, value: Any) -> str:
    """A value as the help writes a default: unset (or what unset means), true/false, a list
    comma-separated (none when empty), or the value itself."""
    if value is None:
        return key_info(key).shown_default or "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):  # a list key (Settings.to_dict writes it as a list)
        return LIST_SEPARATOR.join(value) if value else "none"
    return str(value)


@functools.cache
def _annotations() -> dict[str, Any]:
    """Settings' field types, evaluated (this module's annotations are strings)."""
    return typing.get_type_hints(Settings)


def value_kind(annotation: Any) -> tuple[Any, bool]:
    """What an annotation's values are, None apart (bool, int, str, Path, or a parameterised
    collection such as `tuple[str, ...]`, whose `typing.get_origin` says which), and whether
    None is one of them: `int | None` gives (int, True)."""
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if is_union else (annotation,)
    (kind,) = (member for member in members if member is not NoneType)
    return kind, NoneType in members


def key_kind(key: str) -> Any:
    """The type of a key's values, None apart (see value_kind)."""
    return value_kind(_annotations()[attribute_of(key)])[0]


def _optional(key: str) -> bool:
    """Whether the key may be null (unset)."""
    return value_kind(_annotations()[attribute_of(key)])[1]


def _coerce_bool(key: str, value: Any, from_text: bool) -> bool:
    """JSON true/false; from the environment or a flag also the words true/false/1/0/yes/no."""
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS + FALSE_WORDS:
            return word in TRUE_WORDS
        raise ConfigError(
            f"configuration key '{key}' must be true or false (or 1/0, yes/no), got {value!r}"
        )
    raise ConfigError(f"configuration key '{key}' must be true or false, got {value!r}")


def _coerce(key: str, value: Any, from_text: bool) -> Any:
    """Convert one raw value to the key's type, or raise a ConfigError naming the key."""
    kind = key_kind(key)
    if kind is bool:  # never None: a switch is on or off
        return _coerce_bool(key, value, from_text)
    if value is None:
        if _optional(key):
            return None
        raise ConfigError(f"configuration key '{key}' must not be null (leave it out instead)")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"configuration key '{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"configuration key '{key}' must be an integer, got {value!r}")
    if typing.get_origin(kind) is tuple:
        return _coerce_list(key, value, from_text)
    if not isinstance(value, str):
        raise ConfigError(f"configuration key '{key}' must be a string, got {value!r}")
    return Path(value) if kind is Path else value


def _coerce_list(key: str, value: Any, from_text: bool) -> tuple[str, ...]:
    """A JSON list of strings; from the environment or a flag, items between commas. Blank
    items are dropped, so an empty text is an empty list."""
    if from_text and isinstance(value, str):
        value = value.split(LIST_SEPARATOR)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(
            f"configuration key '{key}' must be a list of strings (comma-separated in the "
            f"environment or a flag), got {value!r}"
        )
    return tuple(item.strip() for item in value if item.strip())


def read_config_file(path: Path, required: bool) -> dict[str, Any]:
    """The JSON object in `path`; {} if it is missing and was not asked for explicitly."""
    if not path.exists():
        if required:
            raise ConfigError(f"configuration file not found: {path} (check --env)")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold one JSON object")
    return data


def _layer(values: Mapping[str, Any], source: str, from_text: bool) -> dict[str, Any]:
    """Each value converted to its key's type, under its key name."""
    known = set(all_keys())
    layer: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown configuration key '{key}' in {source}{did_you_mean(key, all_keys())}"
            )
        layer[key] = _coerce(key, value, from_text)
    return layer


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """"; did you mean model-name?" for the known word nearest a misspelt one, if any is near."""
    near = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {near[0]}?" if near else ""


def environment_values(environ: Mapping[str, str]) -> dict[str, str]:
    """IMAGE_SEARCH_<KEY> variables, under their key names. Unknown ones are errors."""
    values = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name not in NOT_KEYS:
            values[name[len(ENV_PREFIX) :].lower().replace("_", "-")] = value
    return values


# Where a key's value can come from, the weakest first: each replaces those before it.
SOURCES = ("default", "file", "environment", "flag")


@dataclass(frozen=True)
class SourcedSettings:
    """The settings, where each key's value came from (key -> one of SOURCES), and the
    configuration file read (None when there was none)."""

    settings: Settings
    sources: Mapping[str, str]
    file: Path | None


def load_sourced_settings(
    config_path: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SourcedSettings:
    """Build the settings (flags > environment > file > defaults) and say where each value
    came from. Raises ConfigError."""
    path = config_path if config_path is not None else DEFAULT_CONFIG_FILE
    file_values = read_config_file(path, required=config_path is not None)
    given_flags = {k: v for k, v in (flags or {}).items() if v is not None}
    layers = {  # in the order of SOURCES, after the default
        "file": _layer(file_values, f"configuration file {path}", from_text=False),
        "environment": _layer(
            environment_values(os.environ if environ is None else environ),
            "the environment (IMAGE_SEARCH_*)",
            from_text=True,
        ),
        "flag": _layer(given_flags, "the command line", from_text=True),
    }
    values: dict[str, Any] = {}
    sources = dict.fromkeys(all_keys(), SOURCES[0])
    for source in SOURCES[1:]:
        values.update(layers[source])
        sources.update(dict.fromkeys(layers[source], source))
    settings = dataclasses.replace(
        Settings(), **{attribute_of(key): value for key, value in values.items()}
    )
    validate(settings)
    return SourcedSettings(settings, sources, path if path.exists() else None)


def load_settings(
    config_path: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: flags > environment > file > defaults. Raises ConfigError."""
    return load_sourced_settings(config_path, flags, environ).settings


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"configuration key '{key}' {message}")


def validate(settings: Settings) -> None:
    """Raise a ConfigError naming the first key whose value cannot work."""
    for key in all_keys():
        choices = key_info(key).choices
        if choices:
            value = getattr(settings, attribute_of(key))
            _require(value in choices, key, f"must be one of {', '.join(choices)}")
    _require(
        not (settings.precision == "int8" and settings.backend == "torch"),
        "precision",
        "is int8, which only the onnx backend offers; set backend to onnx, or precision to "
        "auto, fp32, bf16 or fp16",
    )
    _require(
        not (settings.precision == "bf16" and settings.backend == "onnx"),
        "precision",
        "is bf16, which the onnx backend does not offer; set precision to auto, fp32, fp16 "
        "or int8, or backend to torch",
    )
    for key in all_keys():
        if key_info(key).positive:
            value = getattr(settings, attribute_of(key))
            _require(value is None or value > 0, key, "must be a positive integer")
    _require(0 < settings.postgres_port < 65536, "postgres-port", "must be between 1 and 65535")
    _require(bool(settings.model_name.strip()), "model-name", "must not be empty")
    _require(
        bool(TABLE_NAME_PATTERN.match(settings.table_name)),
        "table-name",
        "must be a lower-case SQL name: letters, digits and _ (at most 63), not starting "
        f"with a digit; got {settings.table_name!r}",
    )
    _require(
        not settings.table_name.startswith(RESERVED_TABLE_PREFIX),
        "table-name",
        f"names starting with {RESERVED_TABLE_PREFIX} are image-search's own tables; got "
        f"{settings.table_name!r}",
    )
    if settings.ray_address is not None:
        _require(bool(settings.ray_address.strip()), "ray-address", "must not be empty")
        _require(
            not settings.embedded_database or settings.ray_address == LOCAL_RAY,
            "ray-address",
            f"{settings.ray_address!r} needs a PostgreSQL server that every worker can reach: "
            "set postgres-host (only 'local' works with the embedded database)",
        )
    if settings.server_auth is not None:
        user, _, password = settings.server_auth.partition(":")
        _require(bool(user and password), "server-auth", "must look like user:password")
