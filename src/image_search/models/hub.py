"""Before a model id is fetched from the Hugging Face hub: is the hub reachable at all?

Without this, an unreachable hub costs half a minute of retries and a screen of warnings
before the library gives up. One quick connection attempt decides instead: unreachable and
not in the local cache is one clear error; unreachable but cached loads from the cache."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ImageSearchError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# A Hugging Face repository id: a name, or an owner and a name (no leading dot or slash).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_hub_for(name: str) -> None:
    """Make sure `name` can be loaded without a long wait; raise one clear error if not."""
    if not looks_like_hub_id(name) or _offline_already() or _behind_proxy():
        return  # a local folder; or the user chose offline; or a proxy we cannot probe past
    if _hub_reachable():
        return
    if _cached(name):
        log.info("the Hugging Face hub cannot be reached; loading %s from the local cache", name)
        go_offline()
        return
    raise ImageSearchError(
        f"cannot download model '{name}': the Hugging Face hub ({_hub_host()}) cannot be "
        "reached from here, and the model is not in the local cache. Give a local model folder "
        "with --model-name (see \"No internet for models?\" in the README)"
    )


def looks_like_hub_id(name: str) -> bool:
    """`org/model` or `model`, and not a folder here: what the loader would fetch."""
    return bool(HUB_ID.fullmatch(name)) and not Path(name).exists()


def _offline_already() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_VARIABLES)


def _behind_proxy() -> bool:
    return any(os.environ.get(v) for v in PROXY_VARIABLES)


def _hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)).hostname or "huggingface.co"


def _hub_reachable() -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((_hub_host(), port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def go_offline() -> None:
    """Tell huggingface_hub (and transformers, if not yet imported) to use the cache only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
