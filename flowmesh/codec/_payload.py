"""Payload codecs: a bytes -> bytes transform the codec applies to every user value.

With a payload codec (e.g. :class:`flowmesh.security.EncryptionCodec`), each *protected
field* of a message, history event or workflow state - every user value (inputs, outputs,
event data, custom status) and the ``message`` and ``stack_trace`` of failure details - is
msgpack-packed on its own, passed through the payload codec and carried as a msgpack bin in
place of the value. A :class:`BoundPayloadCodec` also gets the value's :class:`PayloadContext`
(hosting app, instance, field), which an encrypting codec authenticates, so that a value
cannot be moved to another app, instance or field; a :class:`PayloadCodec` (e.g. compression)
gets the bytes only. The fields map is tagged with ``"$payload": 1`` so that a reader knows
the values are encoded (and one without a payload codec refuses them clearly instead of
handing bytes to the workflow). docs/protocol-codec.md specifies the wire form.

Which fields are protected is derived from the model's type hints, once per class:
``object``-typed fields (user values) and the fields listed in :data:`_PROTECTED_STR_FIELDS`,
wherever they are nested (``StateReply.state.failure.message``).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast, runtime_checkable

from flowmesh._errors import DecodeError, SerializationError
from flowmesh.codec._convert import wire_name
from flowmesh.codec._wire import Wire
from flowmesh.model import FailureDetails

PAYLOAD_MARKER: Final = "$payload"
"""Key added to the fields map of a blob whose protected fields are encoded."""

PAYLOAD_SCHEME: Final = 1
"""Value of :data:`PAYLOAD_MARKER`: version of the protected-field scheme."""

# str fields that may carry user data too: an error message often quotes the input that
# caused it, and a stack trace shows source lines and their values.
_PROTECTED_STR_FIELDS: Final[dict[type, frozenset[str]]] = {
    FailureDetails: frozenset({"message", "stack_trace"}),
}


@runtime_checkable
class PayloadCodec(Protocol):
    """Transforms the packed bytes of one user value without regard to where it belongs.

    For transforms such as compression. An encrypting codec should be a
    :class:`BoundPayloadCodec` instead, so that its ciphertexts are bound to their place.

    ``decode(encode(data)) == data`` must hold. ``decode`` sees untrusted bytes: it must raise
    :class:`~flowmesh.DecodeError` for anything it cannot decode (the codec turns any other
    exception into a ``DecodeError`` too) and must bound the size of what it returns (a
    decompressing codec must not inflate a small input without limit). Both are called from
    several threads at once.
    """

    def encode(self, data: bytes) -> bytes:
        """Encode the msgpack bytes of one value."""
        ...

    def decode(self, data: bytes) -> bytes:
        """Undo :meth:`encode`; raise ``DecodeError`` for bytes it did not make."""
        ...


@dataclass(frozen=True, slots=True)
class PayloadContext:
    """Where one protected value belongs; a :class:`BoundPayloadCodec` binds the value to it.

    ``app_id`` is the app hosting the workflow instance the value belongs to, ``instance_id``
    that instance, ``field`` the blob kind and the field's path in it (``ActivityTask.input``,
    ``StateReply.state.failure.message``). docs/security-payloads.md says where each kind's
    app and instance come from.
    """

    app_id: str
    instance_id: str
    field: str

    def as_bytes(self) -> bytes:
        """A canonical byte form (length-prefixed parts), e.g. for AEAD associated data.

        Length prefixes make it injective: no two contexts give the same bytes.
        """
        out = bytearray()
        for part in (self.app_id, self.instance_id, self.field):
            # surrogatepass: a hostile envelope's string must give bytes, not an exception.
            raw = part.encode("utf-8", "surrogatepass")
            out += len(raw).to_bytes(4, "big") + raw
        return bytes(out)


@runtime_checkable
class BoundPayloadCodec(Protocol):
    """Transforms one user value's packed bytes bound to its :class:`PayloadContext`.

    ``open(seal(data, context), context) == data`` must hold, and ``open`` must refuse
    (``DecodeError``) a value sealed for another context: that is what keeps a ciphertext
    from being replayed into another app, instance or field. The other requirements are
    those of :class:`PayloadCodec`. The codec prefers this interface when a payload codec
    has both.
    """

    def seal(self, data: bytes, context: PayloadContext) -> bytes:
        """Encode the msgpack bytes of the value at ``context``."""
        ...

    def open(self, data: bytes, context: PayloadContext) -> bytes:
        """Undo :meth:`seal`; raise ``DecodeError`` for bytes not sealed for ``context``."""
        ...


AnyPayloadCodec = PayloadCodec | BoundPayloadCodec
"""What ``Codec(payload_codec=...)`` accepts."""


class _Items:
    """Path segment: every item of an array (a ``tuple[X, ...]`` field)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "[]"


ITEMS: Final = _Items()

Segment = str | _Items
Path = tuple[Segment, ...]


def protected_paths(cls: type) -> tuple[Path, ...]:
    """Paths, within the fields map of ``cls``, of every protected field (nested ones too)."""
    return tuple(_paths(cls, ()))


def _paths(cls: type, building: tuple[type, ...]) -> list[Path]:
    if cls in building:  # the codec refuses recursive classes; do not loop here
        return []
    hints = typing.get_type_hints(cls)
    strings = _PROTECTED_STR_FIELDS.get(cls, frozenset())
    out: list[Path] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name in strings:
            out.append((field.name,))
            continue
        out.extend((field.name, *rest) for rest in _hint_paths(hints[field.name], (*building, cls)))
    return out


def _hint_paths(hint: object, building: tuple[type, ...]) -> list[Path]:
    if hint is object or hint is Any:
        return [()]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return [p for arg in args if arg is not type(None) for p in _hint_paths(arg, building)]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return [(ITEMS, *p) for p in _hint_paths(args[0], building)]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _paths(hint, building)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return []
    return []


def describe_path(path: Path) -> str:
    """``state.failure.message`` / ``waiting_on[].detail`` for error messages."""
    text = ""
    for segment in path:
        if isinstance(segment, _Items):
            text += "[]"
        else:
            text = f"{text}.{segment}" if text else segment
    return text


Transform = Callable[[object, Path], object]


def apply(node: object, path: Path, transform: Transform, full: Path | None = None) -> None:
    """Replace the value at ``path`` inside ``node`` (maps and arrays) by ``transform(value)``.

    Walks only what is there: a missing or nil intermediate (an optional nested dataclass) or a
    missing leaf (a field left at its default) is skipped, and so is an intermediate of the
    wrong type, which the class decoder then refuses with its own error.
    """
    full = path if full is None else full
    head = path[0]
    if isinstance(head, _Items):
        if type(node) is list:
            for item in node:
                apply(item, path[1:], transform, full)
        return
    if type(node) is not dict or head not in node:
        return
    if len(path) == 1:
        node[head] = transform(node[head], full)
    else:
        apply(node[head], path[1:], transform, full)


ContextOf = Callable[[Path], PayloadContext]
"""The context of the protected field at a path of one blob (raises if it cannot be known)."""


class PayloadFields:
    """Seals and opens the protected fields of encoded bodies with one payload codec."""

    __slots__ = ("_bound", "_codec", "_wire")

    def __init__(self, codec: AnyPayloadCodec, wire: Wire) -> None:
        self._codec = codec
        self._bound = isinstance(codec, BoundPayloadCodec)
        self._wire = wire

    @property
    def bound(self) -> bool:
        """Whether the payload codec binds values to their context (so needs it)."""
        return self._bound

    def seal(self, body: dict[str, object], paths: tuple[Path, ...], context: ContextOf) -> None:
        """Encode every protected field of ``body`` (a converter's output) in place."""

        def seal_value(value: object, path: Path) -> object:
            return self._seal_value(value, path, context)

        for path in paths:
            apply(body, path, seal_value)
        body[PAYLOAD_MARKER] = PAYLOAD_SCHEME

    def _seal_value(self, value: object, path: Path, context: ContextOf) -> object:
        packed = self._wire.pack(value)  # the converter has vetted the value
        where = context(path) if self._bound else None
        try:
            if where is not None:
                sealed = cast("BoundPayloadCodec", self._codec).seal(packed, where)
            else:
                sealed = cast("PayloadCodec", self._codec).encode(packed)
        except Exception as exc:
            raise SerializationError(
                f"payload codec {type(self._codec).__name__} failed to encode field "
                f"{describe_path(path)!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if type(sealed) is not bytes:
            raise SerializationError(
                f"payload codec {type(self._codec).__name__} returned "
                f"{type(sealed).__qualname__}, not bytes"
            )
        return sealed

    def open(self, body: dict[Any, object], paths: tuple[Path, ...], context: ContextOf) -> None:
        """Decode every protected field of a decoded ``body`` in place (``DecodeError`` if bad)."""

        def open_value(value: object, path: Path) -> object:
            return self._open_value(value, path, context)

        del body[PAYLOAD_MARKER]
        for path in paths:
            apply(body, path, open_value)

    def _open_value(self, value: object, path: Path, context: ContextOf) -> object:
        if type(value) is not bytes:
            raise DecodeError(
                f"field {describe_path(path)!r} must be an encoded payload (bin), got "
                f"{wire_name(value)}"
            )
        where = context(path) if self._bound else None
        try:
            if where is not None:
                packed = cast("BoundPayloadCodec", self._codec).open(value, where)
            else:
                packed = cast("PayloadCodec", self._codec).decode(value)
        except DecodeError as exc:
            raise DecodeError(f"field {describe_path(path)!r}: {exc}") from None
        except Exception as exc:  # a third-party payload codec must not break the guarantee
            raise DecodeError(
                f"field {describe_path(path)!r}: payload codec {type(self._codec).__name__} "
                f"failed: {type(exc).__name__}"
            ) from None
        if type(packed) is not bytes:
            raise DecodeError(
                f"field {describe_path(path)!r}: payload codec returned "
                f"{type(packed).__qualname__}, not bytes"
            )
        try:
            return self._wire.unpack(packed)
        except DecodeError as exc:
            raise DecodeError(f"field {describe_path(path)!r}: decoded payload: {exc}") from None
