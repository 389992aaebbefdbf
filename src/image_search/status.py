"""What is indexed where: built once here for `image-search status` and for the page."""

from __future__ import annotations

from typing import Any

from .config import Settings
from .store import Database, Store, VectorSpec, database_size, describe_location


def status_of(settings: Settings, database: Database) -> dict[str, Any]:
    """The status as JSON-ready values; the contract's keys first."""
    info = Store(database, settings.table_name).info()
    spec = info.spec if info else VectorSpec.of(settings)
    last = info.last_indexed_at if info else None
    return {
        "database": describe_location(settings),
        "table": settings.table_name,
        "model": spec.model_name,
        "dimension": spec.dimension,
        "vector_type": spec.kind,
        "backend": spec.backend,
        "precision": spec.precision,
        "images": info.images if info else 0,
        "last_indexed_at": last.isoformat() if last else None,
        "database_size": database_size(database),
    }


def status_lines(status: dict[str, Any]) -> list[str]:
    """`key: value` lines for a terminal."""
    return [
        f"{key.replace('_', ' ')}: {value if value is not None else 'never'}"
        for key, value in status.items()
    ]


def status_markdown(status: dict[str, Any], settings: Settings) -> str:
    """One sentence for the top of the page."""
    if not status["images"]:
        return (
            f"**No images are indexed yet** in table `{status['table']}`. Press **Rescan** "
            f"to index `{settings.source_directory}`, or run `image-search index`."
        )
    return (
        f"**{status['images']}** images indexed with `{status['model']}` "
        f"({status['dimension']}-d) in table `{status['table']}`."
    )
