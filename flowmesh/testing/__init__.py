"""Testing helpers: an in-process multi-app environment, history builders and recorders."""

from flowmesh.testing._environment import TestEnvironment
from flowmesh.testing._golden import history_path, record_histories

__all__ = ["TestEnvironment", "history_path", "record_histories"]
