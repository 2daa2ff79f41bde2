"""Shared fixtures: Flower's task identity for in-process Messages, offline environment."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread: tests time nothing, and CI has 2 cores shared with subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Per-session partition/node caches, so tests never read a user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path_factory.getbasetemp() / "home"))


@pytest.fixture(autouse=True)
def _fedhet_logs_reach_caplog():
    """``fedhet.logs.setup_logging`` (run by the ClientApp/ServerApp modules) routes the ``fedhet``
    logger through Flower's handler with ``propagate = False``; pytest's ``caplog`` listens on
    the root logger, so a test asserting on a log line would pass or fail depending on whether
    an earlier test imported an app. Every test sees the records propagate."""
    import logging

    from fedhet.logs import setup_logging

    setup_logging()  # idempotent: done here, it cannot turn propagation off mid-test
    logger = logging.getLogger("fedhet")
    before = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = before
