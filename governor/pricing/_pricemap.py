"""LiteLLM's price map, read as plain data without importing LiteLLM.

Importing litellm takes seconds, so the bundled JSON file is located with
``importlib.util.find_spec`` (which does not run the package) and parsed once
per process. Numbers are parsed as Decimal so that ``1.5e-07`` stays exact.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLED_FILE_NAME",
    "REMOTE_PRICE_MAP_URL",
    "REMOTE_TIMEOUT_S",
    "PriceMap",
    "bundled_price_map",
    "parse_price_map",
    "remote_price_map",
]

logger = logging.getLogger(__name__)

PriceMap = Mapping[str, Mapping[str, Any]]

#: The file LiteLLM ships inside its package as its offline price map.
BUNDLED_FILE_NAME = "model_prices_and_context_window_backup.json"
#: Where LiteLLM publishes its current map (its ``model_cost_map_url`` default).
REMOTE_PRICE_MAP_URL = (
    "https://raw.githubusercontent.com/BerriAI/litellm/main/"
    "model_prices_and_context_window.json"
)
#: Seconds to wait for the remote map before falling back to the bundled one.
REMOTE_TIMEOUT_S = 5.0

# The map documents its own schema under this key; it prices nothing.
_SCHEMA_KEY = "sample_spec"

_lock = threading.Lock()
_bundled: PriceMap | None = None
_remote: dict[str, PriceMap] = {}


def _new_lock_in_child() -> None:
    # A fetch in flight in another thread at os.fork() holds the lock for
    # good in the child, which would hang at its first priced call.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_new_lock_in_child)


def parse_price_map(raw: bytes | str) -> PriceMap:
    """Parse a price map document, keeping only entries that are objects.

    Raises:
        ValueError: the document is not JSON or not an object of objects.
    """
    data = json.loads(raw, parse_float=Decimal)
    if not isinstance(data, dict):
        raise ValueError(f"a price map is a JSON object, got {type(data).__name__}")
    entries = {
        key: entry
        for key, entry in data.items()
        if isinstance(entry, dict) and key != _SCHEMA_KEY
    }
    if data and not entries:
        raise ValueError("the price map holds no model entries")
    return entries


def _bundled_path() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / BUNDLED_FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def bundled_price_map() -> PriceMap:
    """Return LiteLLM's bundled price map, loaded on first use and then shared.

    An empty map comes back (with a WARNING) when litellm is not installed, so
    that models priced by overrides still work.
    """
    global _bundled
    if _bundled is not None:
        return _bundled
    with _lock:
        if _bundled is None:
            _bundled = _load_bundled()
    return _bundled


def _load_bundled() -> PriceMap:
    path = _bundled_path()
    if path is None:
        logger.warning(
            "LiteLLM's bundled price map %s was not found; only models priced "
            "by Pricing.overrides or Pricing.default can be used",
            BUNDLED_FILE_NAME,
        )
        return {}
    return parse_price_map(path.read_bytes())


def remote_price_map(
    url: str = REMOTE_PRICE_MAP_URL, *, timeout_s: float = REMOTE_TIMEOUT_S
) -> PriceMap:
    """Fetch the current price map from ``url`` once per process.

    A failed fetch logs a WARNING and returns the bundled map; it is not
    remembered, so a later rate card may try again. Only a successful fetch
    is cached.
    """
    cached = _remote.get(url)
    if cached is not None:
        return cached
    with _lock:
        cached = _remote.get(url)
        if cached is None:
            cached = _fetch(url, timeout_s)
            if cached is not None:
                _remote[url] = cached
    return bundled_price_map() if cached is None else cached


def _fetch(url: str, timeout_s: float) -> PriceMap | None:
    # httpx comes with litellm; imported here so that pricing stays light.
    import httpx

    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=True)
        response.raise_for_status()
        entries = parse_price_map(response.content)
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning(
            "could not fetch the price map from %s (%s); using LiteLLM's "
            "bundled map instead",
            url,
            exc,
        )
        return None
    logger.debug("fetched a price map of %d entries from %s", len(entries), url)
    return entries
