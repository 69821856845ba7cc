"""Typing helpers for tests that inspect Redis stores."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from flowmesh.store.redis import RedisStore

StoreOpener = Callable[[str], Awaitable[RedisStore]]
"""Opens (and later closes) the Redis store of an app ID: the ``store_for`` fixture."""
