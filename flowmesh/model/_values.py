"""Checks on user values and identifiers, shared by the engine, the client and the codec.

Pure Python on purpose: the replay engine must reject an unserialisable activity input at the
call site without importing msgpack.
"""

from __future__ import annotations

import re

from flowmesh._errors import InvalidInstanceIdError, SerializationError, ValidationError

MAX_VALUE_DEPTH = 32
"""Deepest nesting of lists/dicts accepted in a user value (the decoder enforces the same)."""

_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,199}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,199}")
_APP_ID = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")


def check_value(value: object, where: str) -> None:
    """Raise :class:`SerializationError` unless ``value`` is a msgpack-native value.

    Allowed: None, bool, int (64-bit), float, str, bytes, and lists/tuples/dicts of those with
    str or int keys, nested at most :data:`MAX_VALUE_DEPTH` deep. ``where`` says whose value it
    is (e.g. "input of activity 'charge'") so the error points at the call site.
    """
    _check(value, where, "value", 0)


def _check(value: object, where: str, path: str, depth: int) -> None:
    if depth > MAX_VALUE_DEPTH:
        raise SerializationError(f"{where}: {path} is nested deeper than {MAX_VALUE_DEPTH} levels")
    if value is None or isinstance(value, bool | float | str | bytes):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise SerializationError(f"{where}: {path} is an int outside the 64-bit range")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, where, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise SerializationError(
                    f"{where}: {path} has a key of type {type(key).__qualname__}; "
                    "only str and int keys can be serialised"
                )
            _check(item, where, f"{path}[{key!r}]", depth + 1)
        return
    kind = type(value)
    raise SerializationError(
        f"{where}: {path} is of type {kind.__module__}.{kind.__qualname__}, which flowmesh cannot "
        "serialise; pass None, bool, int, float, str, bytes, list or dict values "
        "(convert dataclasses with dataclasses.asdict, datetimes with isoformat())"
    )


def check_instance_id(instance_id: str) -> str:
    """Return ``instance_id`` if valid, else raise :class:`InvalidInstanceIdError`.

    IDs become Redis keys and log fields, so they are limited to 200 characters of
    ``A-Z a-z 0-9 . _ : @ -`` starting with a letter or digit.
    """
    if not isinstance(instance_id, str) or not _INSTANCE_ID.fullmatch(instance_id):
        raise InvalidInstanceIdError(
            f"invalid instance ID {instance_id!r}: use 1-200 characters from "
            "A-Z a-z 0-9 . _ : @ -, starting with a letter or digit"
        )
    return instance_id


def check_name(name: str, kind: str) -> str:
    """Return a workflow/activity ``name`` if valid, else raise :class:`ValidationError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            f"invalid {kind} name {name!r}: use 1-200 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or underscore"
        )
    return name


def check_app_id(app_id: str) -> str:
    """Return ``app_id`` if valid, else raise :class:`ValidationError`.

    App IDs name RabbitMQ queues and Redis key prefixes and appear in DNS-style deployment
    names, so they are lower-case letters, digits and ``-`` (max 63), like Kubernetes names.
    """
    if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
        raise ValidationError(
            f"invalid app ID {app_id!r}: use 1-63 characters from a-z 0-9 -, starting with a "
            "letter or digit"
        )
    return app_id
