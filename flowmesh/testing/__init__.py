"""Testing helpers: an in-process multi-app environment and history builders."""

from flowmesh.testing._environment import TestEnvironment

__all__ = ["TestEnvironment"]
