"""Shared fixtures.

Real-service fixtures skip when RabbitMQ or Redis is unreachable on a laptop, but *fail* under
``CI=true``: a CI run that silently skipped the integration suite would prove nothing.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

AMQP_URL = os.environ.get("FLOWMESH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("FLOWMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _require(url: str, default_port: int, what: str) -> str:
    if _reachable(url, default_port):
        return url
    message = f"{what} is not reachable at {url}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; under CI=true real-service tests must run, not skip")
    pytest.skip(message)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of the real RabbitMQ (skips locally when down, fails under CI=true)."""
    return _require(AMQP_URL, 5672, "RabbitMQ")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis (skips locally when down, fails under CI=true)."""
    return _require(REDIS_URL, 6379, "Redis")
