"""Fetching from the Hugging Face Hub, for every adapter whose weights come from it (timm's
families and transformers')."""
from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

from huggingface_hub import constants


@contextmanager
def hub_session() -> Iterator[None]:
    """Fetch through huggingface_hub without its retry noise: it logs every retry on stderr and
    backs off for about 25 s per file before giving up, so when the Hub's host does not even
    resolve (no network) use its offline mode (local cache only) for this fetch; the failure
    then becomes our one-line error at once."""
    hub_logger = logging.getLogger("huggingface_hub")
    level, offline = hub_logger.level, constants.HF_HUB_OFFLINE
    hub_logger.setLevel(logging.ERROR)
    if not offline and not _resolves(urlparse(constants.ENDPOINT).hostname):
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_logger.setLevel(level)
        constants.HF_HUB_OFFLINE = offline


def _resolves(host: str | None) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return False
    return True
