"""What is indexed where: built once here for `image-search status` and for the page."""

from __future__ import annotations

from typing import Any

from .config import Settings
from .models.precision import Decision, decide_for, planned_spec
from .store import Database, Store, database_size, describe_location

SIZE_UNITS = ("bytes", "kB", "MB", "GB", "TB")


def status_of(
    settings: Settings, database: Database, decision: Decision | None = None
) -> dict[str, Any]:
    """The status as JSON-ready values; the contract's keys first. `model`, `dimension`,
    `backend` and `precision` are the table's; `configured_*` what the settings ask for;
    `backend_in_use`, `precision_in_use` and `device_in_use` the command's `decision` (by
    default decided here as the command line does), and `backend_reason` why."""
    info = Store(database, settings.table_name).info()
    if decision is None:
        filled = info.spec if info is not None and info.stored else None
        decision = decide_for(settings, filled)
    configured = planned_spec(settings, decision)
    spec = info.spec if info else configured
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
        # Rows of files an index run found missing: kept, but no search sees them.
        "missing": info.missing if info else 0,
        "last_indexed_at": last.isoformat() if last else None,
        "database_size": database_size(database),
        "configured_model": configured.model_name,
        "configured_dimension": configured.dimension,
        # Precision classes, not names: a table filled in bf16 on a GPU takes fp32 vectors.
        "settings_match_table": spec.same_vectors(configured),
        "backend_in_use": decision.backend,
        "precision_in_use": decision.precision,
        "device_in_use": decision.device,
        "backend_reason": decision.reason,
        "table_vectors": spec.describe() if info else None,
        "table_flags": spec.as_flags() if info else None,  # the flags that search this table
    }


def human_size(size: int) -> str:
    """Bytes for people: 8722111 -> "8.3 MB"."""
    value = float(size)
    for unit in SIZE_UNITS:
        if value < 1000 or unit == SIZE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def status_lines(status: dict[str, Any]) -> list[str]:
    """Lines for a terminal; says plainly when the settings ask for other vectors."""
    shown = {
        "database": status["database"],
        "table": status["table"],
        "model": f"{status['model']} ({status['dimension']}-d, {status['vector_type']})",
        "images": status["images"],
        "last indexed": status["last_indexed_at"] or "never",
        "database size": human_size(status["database_size"]),
        "backend": f"{status['backend_in_use']} {status['precision_in_use']} "
        f"({status['backend_reason']})",
    }
    if status["table_vectors"] is not None:
        shown["backend"] += f"; the table's: {status['backend']} {status['precision']}"
    lines = [f"{key}: {value}" for key, value in shown.items()]
    if status["missing"]:
        lines.insert(
            list(shown).index("images") + 1,
            f"missing: {status['missing']} stored images whose files were not found, left out "
            "of searches until they are back (index --prune removes them)",
        )
    if not status["settings_match_table"] and status["table_flags"] is not None:
        lines.append(
            f"note: the settings ask for {status['configured_model']} "
            f"({status['configured_dimension']}-d) made by {status['backend_in_use']} "
            f"{status['precision_in_use']}, but the table holds {status['table_vectors']}: to "
            f"use this table, give {status['table_flags']} (or put them in config.json)"
        )
    return lines
