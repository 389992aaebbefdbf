"""One typed settings object, read from defaults < JSON file < IMAGE_SEARCH_* env < flags."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG_FILE = Path("config.json")
ENV_PREFIX = "IMAGE_SEARCH_"
REDACTED = "***"
SECRET_KEYS = ("postgres-password", "server-auth")
# IMAGE_SEARCH_* variables that are switches of their own, not configuration keys: --debug,
# and the opt-in test with real model weights (tests/test_real_models.py).
NOT_KEYS = (ENV_PREFIX + "DEBUG", ENV_PREFIX + "REAL_MODEL")
DEVICES = ("auto", "cpu", "cuda", "mps")
RESIZE_MODES = ("fit", "stretch")
VECTOR_TYPES = ("vector", "halfvec")
BACKENDS = ("auto", "onnx", "torch")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# A RAW file and a JPEG (or HEIC) of the same name in one folder: index the JPEG only (one
# row per shot, the camera's own rendering; rclip does the same), the RAW only, or both.
RAW_WITH_JPEG = ("skip-raw", "skip-jpeg", "both")
# The ray-address that starts a private Ray instance on this machine for the run.
LOCAL_RAY = "local"
# How a boolean key may be written in the environment or on the command line.
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
# Lower-case identifiers only: a table name is an SQL identifier, never free text.
TABLE_NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# The names of image-search's own tables (the meta table, failed files, the shadow tables of
# re-index runs) start with this; no table-name may.
RESERVED_TABLE_PREFIX = "image_search_"


@dataclass(frozen=True)
class Settings:
    """Every configuration key. Attribute `a_b` is the key `a-b`."""

    source_directory: Path = Path("images")
    output_directory: Path = Path("output")
    device: str = "auto"
    model_name: str = "jinaai/jina-clip-v2"
    dimension: int = 1024
    resize_width: int = 960
    resize_height: int = 540
    resize_mode: str = "fit"
    postgres_host: str | None = None
    postgres_port: int = 5432
    postgres_user: str = "postgres"
    postgres_password: str | None = None
    postgres_database: str = "postgres"
    data_directory: Path = Path(".image-search")
    table_name: str = "images"
    top_k: int = 10
    batch_size: int | None = None  # None: 16 on the CPU, chosen by GPU memory on a GPU
    # Above a 200-megapixel phone's 16320x12240; a decompression bomb is still refused.
    max_image_pixels: int = 250_000_000
    raw_with_jpeg: str = "skip-raw"
    vector_type: str = "vector"
    server_auth: str | None = None
    trust_remote_code: bool = True
    save_results: bool = True
    backend: str = "auto"
    precision: str = "auto"
    ray_address: str | None = None

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


def key_of(attribute: str) -> str:
    return attribute.replace("_", "-")


def attribute_of(key: str) -> str:
    return key.replace("-", "_")


def all_keys() -> list[str]:
    return [key_of(f.name) for f in fields(Settings)]


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _field_kind(key: str) -> type:
    """The base type of a key: bool, int, str or Path (Optional stripped)."""
    annotation = {f.name: f.type for f in fields(Settings)}[attribute_of(key)]
    for kind in (bool, int, Path):
        if kind.__name__ in str(annotation):
            return kind
    return str


def _optional(key: str) -> bool:
    annotation = {f.name: f.type for f in fields(Settings)}[attribute_of(key)]
    return "None" in str(annotation)


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
    kind = _field_kind(key)
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
    if not isinstance(value, str):
        raise ConfigError(f"configuration key '{key}' must be a string, got {value!r}")
    return Path(value) if kind is Path else value


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
    known = set(all_keys())
    layer: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown configuration key '{key}' in {source}{did_you_mean(key, all_keys())}"
            )
        layer[attribute_of(key)] = _coerce(key, value, from_text)
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


def load_settings(
    config_path: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: flags > environment > file > defaults. Raises ConfigError."""
    path = config_path if config_path is not None else DEFAULT_CONFIG_FILE
    file_values = read_config_file(path, required=config_path is not None)
    env = environment_values(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    merged.update(_layer(file_values, f"configuration file {path}", from_text=False))
    merged.update(_layer(env, "the environment (IMAGE_SEARCH_*)", from_text=True))
    given_flags = {k: v for k, v in (flags or {}).items() if v is not None}
    merged.update(_layer(given_flags, "the command line", from_text=True))
    settings = dataclasses.replace(Settings(), **merged)
    validate(settings)
    return settings


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"configuration key '{key}' {message}")


def validate(settings: Settings) -> None:
    """Raise a ConfigError naming the first key whose value cannot work."""
    _require(settings.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
    _require(
        settings.resize_mode in RESIZE_MODES,
        "resize-mode",
        f"must be one of {', '.join(RESIZE_MODES)}",
    )
    _require(
        settings.vector_type in VECTOR_TYPES,
        "vector-type",
        f"must be one of {', '.join(VECTOR_TYPES)}",
    )
    _require(
        settings.raw_with_jpeg in RAW_WITH_JPEG,
        "raw-with-jpeg",
        f"must be one of {', '.join(RAW_WITH_JPEG)}",
    )
    _require(settings.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}")
    _require(
        settings.precision in PRECISIONS,
        "precision",
        f"must be one of {', '.join(PRECISIONS)}",
    )
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
    for key in (
        "dimension",
        "resize-width",
        "resize-height",
        "top-k",
        "batch-size",
        "max-image-pixels",
    ):
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
