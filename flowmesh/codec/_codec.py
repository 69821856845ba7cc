"""The codec: model objects to versioned msgpack envelopes and back.

Every blob is a msgpack array ``[FORMAT_VERSION, kind, fields]`` where ``kind`` is the class
name and ``fields`` a map of field name to wire value; docs/protocol-codec.md specifies it.
With a payload codec, protected fields (user values, failure messages and stacks) are carried
encoded (e.g. encrypted) as bin, and the fields map is tagged ``"$payload": 1``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, cast

from flowmesh._errors import (
    ConfigurationError,
    DecodeError,
    PayloadTooLargeError,
    SerializationError,
)
from flowmesh.codec._binding import Binding, binding_of, lookup
from flowmesh.codec._convert import ClassConverter, ConversionError, build_converter, wire_name
from flowmesh.codec._payload import (
    PAYLOAD_MARKER,
    PAYLOAD_SCHEME,
    AnyPayloadCodec,
    BoundPayloadCodec,
    ContextOf,
    Path,
    PayloadCodec,
    PayloadContext,
    PayloadFields,
    describe_path,
    protected_paths,
)
from flowmesh.codec._where import describe, describe_value, subject
from flowmesh.codec._wire import Wire
from flowmesh.model import (
    HISTORY_EVENT_TYPES,
    MAX_VALUE_DEPTH,
    MESSAGE_TYPES,
    HistoryEvent,
    Message,
    WorkflowState,
    check_value,
)

FORMAT_VERSION: Final = 1
"""Envelope version this codec writes and the only one it reads."""

_MESSAGE: Final = "message"
_EVENT: Final = "history event"
_STATE: Final = "workflow state"


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """Size limits of the codec; the decode limits are the defence against hostile input.

    ``max_message_bytes`` caps encoded blobs (encoding a larger one raises
    ``PayloadTooLargeError``, so nothing is written that could not be read back) and input to
    decode. ``max_depth`` caps nesting of arrays and maps on decode, the envelope array being
    level 1 (user values are limited to ``model.MAX_VALUE_DEPTH`` = 32 levels when encoded;
    the envelope adds up to five). ``max_collection_len`` caps the items of one array or map
    on decode.
    """

    max_message_bytes: int = 4 * 1024 * 1024
    max_depth: int = 64
    max_collection_len: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_depth", "max_collection_len"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(
                    f"CodecLimits.{name} must be a positive int, got {value!r}"
                )


DEFAULT_LIMITS: Final = CodecLimits()
"""The limits a :class:`Codec` uses unless given others."""


@dataclass(frozen=True, slots=True)
class _Kind:
    tag: str
    group: str
    converter: ClassConverter
    protected: tuple[Path, ...]
    """Paths of the fields a payload codec encodes (user values, failure texts)."""
    binding: Binding
    """Where the app and instance of the protected values come from (codec/_binding.py)."""


@dataclass(frozen=True, slots=True)
class _Kinds:
    by_type: Mapping[type, _Kind]
    by_tag: Mapping[str, _Kind]


@functools.cache
def _kinds() -> _Kinds:
    """The fixed table of encodable classes, built on first use and read-only afterwards.

    Tags map only to these classes; nothing in the data can name any other.
    """
    groups: list[tuple[str, tuple[type, ...]]] = [
        (_MESSAGE, MESSAGE_TYPES),
        (_EVENT, HISTORY_EVENT_TYPES),
        (_STATE, (WorkflowState,)),
    ]
    by_type: dict[type, _Kind] = {}
    for group, classes in groups:
        for cls in classes:
            by_type[cls] = _Kind(
                cls.__name__, group, build_converter(cls), protected_paths(cls), binding_of(cls)
            )
    by_tag = {kind.tag: kind for kind in by_type.values()}
    if len(by_tag) != len(by_type):
        raise TypeError("two encodable model classes share a name, so their tags would clash")
    return _Kinds(MappingProxyType(by_type), MappingProxyType(by_tag))


# Bytes kept free for the envelope and the other fields of the message carrying a value.
_ENVELOPE_ROOM = 4096


class Codec:
    """Encodes messages, history events and workflow states to msgpack bytes, and back.

    Thread-safe and cheap to share; construct one per process (or per limits) and reuse it.
    Encode errors are ``SerializationError`` (``PayloadTooLargeError`` for size); every
    problem with bytes to decode is a ``DecodeError``.

    ``payload_codec`` (e.g. :class:`flowmesh.security.EncryptionCodec`) encodes every user
    value and the message and stack trace of failure details; without one nothing changes on
    the wire. A :class:`~flowmesh.codec.BoundPayloadCodec` binds each value to its app,
    instance and field, which is why some methods take ``app_id`` / ``instance_id``: the ones
    a blob does not name itself (codec/_binding.py, docs/security-payloads.md). A codec with
    a payload codec refuses blobs whose protected fields are plaintext, unless
    ``allow_plaintext`` (for switching a running deployment to encryption: it reads histories
    written before, and always writes encoded values). A codec without one refuses blobs with
    encoded fields.
    """

    __slots__ = ("_allow_plaintext", "_limits", "_payload", "_payload_codec", "_wire")

    def __init__(
        self,
        limits: CodecLimits = DEFAULT_LIMITS,
        *,
        payload_codec: AnyPayloadCodec | None = None,
        allow_plaintext: bool = False,
    ) -> None:
        self._limits = limits
        self._wire = Wire(limits.max_message_bytes, limits.max_depth, limits.max_collection_len)
        self._payload_codec = payload_codec
        self._allow_plaintext = allow_plaintext
        self._payload: PayloadFields | None = None
        if payload_codec is not None:
            if not isinstance(payload_codec, BoundPayloadCodec | PayloadCodec):
                raise ConfigurationError(
                    "payload_codec must have seal(bytes, context) and open(bytes, context), or "
                    f"encode(bytes) and decode(bytes) methods, got "
                    f"{type(payload_codec).__qualname__}"
                )
            # A protected value is unpacked on its own, so it gets the user-value depth limit.
            inner = Wire(
                limits.max_message_bytes,
                min(limits.max_depth, MAX_VALUE_DEPTH + 1),
                limits.max_collection_len,
            )
            self._payload = PayloadFields(payload_codec, inner)

    @property
    def limits(self) -> CodecLimits:
        """The limits this codec enforces."""
        return self._limits

    @property
    def payload_codec(self) -> AnyPayloadCodec | None:
        """The payload codec applied to protected fields, if any."""
        return self._payload_codec

    def encode_message(
        self, message: Message, *, app_id: str | None = None, where: str = ""
    ) -> bytes:
        """Encode a wire message.

        ``app_id`` is the app hosting the workflow the message concerns, which a bound payload
        codec binds its values to; it is needed (with such a codec) only for the messages
        that do not name it: ``ActivityResult``, ``ChildResult`` and ``RaiseEvent``, i.e. the
        app whose reply queue they are sent to (``TypeError`` if missing). ``where`` names
        whose value it carries (e.g. ``"input of activity 'charge'"``) for error messages;
        without it one is derived from the message.
        """
        return self._encode(message, _MESSAGE, where, app_id, None)

    def check_value(self, value: object, where: str) -> None:
        """Raise unless ``value`` can travel: msgpack-native and small enough.

        ``SerializationError`` names the offending type and ``where``;
        ``PayloadTooLargeError`` when the value alone leaves no room in a message.
        """
        check_value(value, where)
        try:
            size = len(self._wire.pack(value))
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"{where}: cannot be packed by msgpack: {exc}") from exc
        limit = self._limits.max_message_bytes - _ENVELOPE_ROOM
        if size > limit:
            raise PayloadTooLargeError(
                f"{where}: {size} bytes encoded, more than the {limit}-byte room in a "
                f"{self._limits.max_message_bytes}-byte message (CodecLimits.max_message_bytes); "
                "pass large data by reference (e.g. a blob-store key) instead"
            )

    def decode_message(self, data: bytes, *, app_id: str | None = None) -> Message:
        """Decode bytes made by :meth:`encode_message`; raises ``DecodeError`` otherwise.

        ``app_id`` is as for :meth:`encode_message`: a worker passes its own app ID (the
        messages that need it arrive on its reply queue). Values sealed for another app,
        instance or field are refused.
        """
        return cast("Message", self._decode(data, _MESSAGE, app_id, None))

    def encode_event(
        self, event: HistoryEvent, *, app_id: str | None = None, instance_id: str | None = None
    ) -> bytes:
        """Encode a history event of ``instance_id`` hosted by ``app_id``.

        Both are needed with a bound payload codec (``TypeError`` if missing) for events with
        protected fields: the values are bound to the history that holds them.
        """
        return self._encode(event, _EVENT, "", app_id, instance_id)

    def decode_event(
        self, data: bytes, *, app_id: str | None = None, instance_id: str | None = None
    ) -> HistoryEvent:
        """Decode bytes made by :meth:`encode_event` for the same app and instance.

        Raises ``DecodeError`` otherwise, also for values sealed for another history.
        """
        return cast("HistoryEvent", self._decode(data, _EVENT, app_id, instance_id))

    def encode_state(
        self, state: WorkflowState, *, app_id: str | None = None, instance_id: str | None = None
    ) -> bytes:
        """Encode a workflow state snapshot kept for ``instance_id`` by ``app_id``'s store.

        Both are needed with a bound payload codec (``TypeError`` if missing), as for events.
        """
        return self._encode(state, _STATE, "", app_id, instance_id)

    def decode_state(
        self, data: bytes, *, app_id: str | None = None, instance_id: str | None = None
    ) -> WorkflowState:
        """Decode bytes made by :meth:`encode_state` for the same app and instance.

        Raises ``DecodeError`` otherwise, also for values sealed for another instance.
        """
        return cast("WorkflowState", self._decode(data, _STATE, app_id, instance_id))

    def _encode(
        self, obj: object, group: str, where: str, app_id: str | None, instance_id: str | None
    ) -> bytes:
        kind = _kinds().by_type.get(type(obj))
        if kind is None or kind.group != group:
            # A programming error, not a bad value: the caller passed the wrong kind of object.
            raise TypeError(f"cannot encode {type(obj).__qualname__} as a flowmesh {group}")
        try:
            body = kind.converter.encode(obj)
        except ConversionError as exc:
            raise _encode_error(obj, kind, exc, where) from None
        if self._payload is not None and kind.protected:
            missing = _missing_binding(kind, app_id, instance_id) if self._payload.bound else ""
            if missing:
                # A programming error: the value could not be bound to where it belongs.
                raise TypeError(
                    f"encoding a {kind.tag} with a payload codec needs {missing}: its values "
                    "are bound to the app hosting the workflow and to the instance"
                )
            context = _context_of(kind, body, app_id, instance_id)
            try:
                self._payload.seal(body, kind.protected, context)
            except SerializationError as exc:
                raise SerializationError(f"{where or describe(obj)}: {exc}") from exc
            except (TypeError, ValueError, OverflowError) as exc:
                raise SerializationError(
                    f"{where or describe(obj)}: {kind.tag}{self._culprit(body)} cannot be "
                    f"packed by msgpack: {type(exc).__name__}: {exc}"
                ) from exc
        try:
            data = self._wire.pack([FORMAT_VERSION, kind.tag, body])
        except (TypeError, ValueError, OverflowError) as exc:
            # check_value passed, so this is rare (e.g. a str holding a lone surrogate).
            raise SerializationError(
                f"{where or describe(obj)}: {kind.tag}{self._culprit(body)} cannot be "
                f"packed by msgpack: {type(exc).__name__}: {exc}"
            ) from exc
        size = len(data)
        if size > self._limits.max_message_bytes:
            raise PayloadTooLargeError(
                f"{where or describe(obj)}: encoded {kind.tag} is {size} bytes, more than the "
                f"{self._limits.max_message_bytes}-byte limit (CodecLimits.max_message_bytes); "
                "pass large data by reference (e.g. a blob-store key) instead"
            )
        return data

    def _culprit(self, body: dict[str, object]) -> str:
        """`` field 'name'`` for the first field that does not pack, to point at the cause."""
        for name, value in body.items():
            try:
                self._wire.pack(value)
            except (TypeError, ValueError, OverflowError):
                return f" field {name!r}"
        return ""

    def _decode(
        self, data: bytes, group: str, app_id: str | None, instance_id: str | None
    ) -> object:
        raw = self._wire.unpack(data)
        if not isinstance(raw, list) or not raw:
            raise DecodeError(
                f"not a flowmesh {group}: expected an array [version, kind, fields], "
                f"got {wire_name(raw)}"
            )
        version = raw[0]
        if type(version) is not int:
            raise DecodeError(
                f"not a flowmesh {group}: envelope version is a {wire_name(version)}, not an int"
            )
        if version != FORMAT_VERSION:
            raise DecodeError(
                f"unsupported envelope version {version}: this codec supports version "
                f"{FORMAT_VERSION} only"
            )
        if len(raw) != 3:
            raise DecodeError(
                f"not a flowmesh {group}: a version {FORMAT_VERSION} envelope has 3 items "
                f"[version, kind, fields], got {len(raw)}"
            )
        tag, body = raw[1], raw[2]
        if type(tag) is not str:
            raise DecodeError(f"not a flowmesh {group}: kind is a {wire_name(tag)}, not a str")
        kind = _kinds().by_tag.get(tag)
        if kind is None:
            raise DecodeError(f"unknown {group} kind {_shown(tag)}")
        if kind.group != group:
            raise DecodeError(f"expected a {group}, got a {kind.group} ({tag})")
        if type(body) is dict and kind.protected:
            self._open(body, kind, app_id, instance_id)
        try:
            return kind.converter.decode(body)
        except ConversionError as exc:
            where = f"field {exc.path!r}" if exc.path else "fields"
            raise DecodeError(f"invalid {tag} {group}: {where}: {exc.reason}") from None

    def _open(
        self,
        body: dict[object, object],
        kind: _Kind,
        app_id: str | None,
        instance_id: str | None,
    ) -> None:
        """Decode the protected fields of ``body`` in place, or refuse the blob."""
        marker = body.get(PAYLOAD_MARKER)
        if marker is None:
            if self._payload is not None and not self._allow_plaintext:
                raise DecodeError(
                    f"invalid {kind.tag}: its values are not encoded, but this codec requires "
                    "encoded (encrypted) payloads; plaintext is refused unless allow_plaintext"
                )
            return
        if self._payload is None:
            raise DecodeError(
                f"invalid {kind.tag}: its values are encoded by a payload codec (e.g. "
                "encrypted), and this codec has none: configure the same payload keys "
                "(FLOWMESH_PAYLOAD_KEYS) as the writer"
            )
        if type(marker) is not int or marker != PAYLOAD_SCHEME:
            shown = repr(marker)[:40] if type(marker) in (int, str) else wire_name(marker)
            raise DecodeError(
                f"invalid {kind.tag}: unsupported {PAYLOAD_MARKER} scheme {shown}; this codec "
                f"supports {PAYLOAD_SCHEME}"
            )
        missing = _missing_binding(kind, app_id, instance_id) if self._payload.bound else ""
        if missing:
            raise DecodeError(
                f"invalid {kind.tag}: cannot check that its encoded values belong here: the "
                f"reader did not say which {missing} it reads for"
            )
        try:
            self._payload.open(body, kind.protected, _context_of(kind, body, app_id, instance_id))
        except DecodeError as exc:
            raise DecodeError(f"invalid {kind.tag}: {exc}") from None


def _missing_binding(kind: _Kind, app_id: str | None, instance_id: str | None) -> str:
    """``"app_id= and instance_id="`` etc. for the parts the caller must give and did not."""
    missing = []
    if kind.binding.app is None and app_id is None:
        missing.append("app_id=")
    if kind.binding.instance is None and instance_id is None:
        missing.append("instance_id=")
    return " and ".join(missing)


def _context_of(
    kind: _Kind, body: dict[Any, object], app_id: str | None, instance_id: str | None
) -> ContextOf:
    """The :data:`ContextOf` of ``body``'s protected fields (after :func:`_missing_binding`)."""
    app = app_id if kind.binding.app is None else lookup(body, kind.binding.app)
    instance = instance_id if kind.binding.instance is None else lookup(body, kind.binding.instance)

    def context(path: Path) -> PayloadContext:
        # Only a hostile envelope gets here with a non-str: the converter would refuse it later.
        for name, value in (("app ID", app), ("instance ID", instance)):
            if type(value) is not str:
                raise DecodeError(
                    f"its {name} is a {wire_name(value)}, so its encoded values cannot be checked"
                )
        return PayloadContext(
            cast("str", app), cast("str", instance), f"{kind.tag}.{describe_path(path)}"
        )

    return context


def _encode_error(obj: object, kind: _Kind, exc: ConversionError, where: str) -> SerializationError:
    """The SerializationError for a field of ``obj`` that failed to convert."""
    if exc.user_value:
        if not where:
            where = describe_value(obj, exc.path)
        elif len(kind.converter.user_paths) > 1:
            where = f"{where} ({kind.tag}.{exc.path})"  # say which of several user values
        try:
            # Re-check with the full where: check_value words the message (type, path, hint).
            check_value(exc.value, where)
        except SerializationError as error:
            return error
        return SerializationError(f"{where}: {exc.reason}")
    return SerializationError(f"{where or subject(obj)}: field {kind.tag}.{exc.path}: {exc.reason}")


def _shown(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."
