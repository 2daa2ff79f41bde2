"""Logging set-up: fedhet logs through Flower's logger handlers so lines reach `flwr run --stream`."""

from __future__ import annotations

import logging

_CONFIGURED = False


def setup_logging(level: int = logging.INFO) -> None:
    """Route the ``fedhet`` logger through Flower's handler (idempotent)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    flwr_logger = logging.getLogger("flwr")
    logger = logging.getLogger("fedhet")
    logger.setLevel(level)
    if flwr_logger.handlers:
        for handler in flwr_logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False
    _CONFIGURED = True
