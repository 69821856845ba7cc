"""Generic conversion between the model's frozen dataclasses and msgpack-native primitives.

A :class:`ClassConverter` is built once per dataclass from its fields and type hints: every
field gets a pair of small functions chosen from its declared type, so encoding and decoding
is a loop over precomputed closures with no type introspection on the hot path.

Wire forms (docs/protocol-codec.md): dataclass -> map of field name to value (init fields, in
order); ``datetime`` -> int microseconds since the Unix epoch (UTC); ``timedelta`` -> int
microseconds; ``bytes`` -> bin; enum -> its value; ``tuple[X, ...]`` -> array; ``X | None`` ->
nil or X; ``object`` (user values) -> the value itself, checked by ``model.check_value``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from flowmesh._errors import SerializationError
from flowmesh.model import MAX_VALUE_DEPTH, FieldRangeError, check_value

Encoder = Callable[[Any], object]
"""Turns a field value into its msgpack-native wire form; raises :class:`ConversionError`."""

Decoder = Callable[[Any], object]
"""Turns a decoded wire value back into the field's Python type; raises :class:`ConversionError`."""

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""Origin of the wire form of datetimes (int microseconds since this instant)."""

_MICROSECOND: Final = timedelta(microseconds=1)
# The integer range msgpack can carry (int64 for negatives, uint64 for positives).
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# Exact types a user value may hold without further checks (ints need a range check).
_PLAIN_SCALARS: Final = frozenset({type(None), bool, float, str, bytes})
# Containers longer than this are pre-scanned at C speed before any Python-level loop.
_SCAN_FROM: Final = 8

# Names of msgpack types, used in decode errors so a non-Python implementer can read them.
_WIRE_NAMES: Final[dict[type, str]] = {
    type(None): "nil",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    list: "array",
    dict: "map",
}


class ConversionError(Exception):
    """A field value does not fit its declared type.

    Internal to the codec, which re-raises it as ``SerializationError`` or ``DecodeError``
    with the message kind and ``where`` added. ``path`` locates the field inside the object
    (``state.waiting_on[2].since``); ``user_value`` marks a failed user-value check, whose
    offending ``value`` the codec re-checks with a full ``where`` to build its message.
    """

    def __init__(self, reason: str, *, value: object = None, user_value: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = ""
        self.value = value
        self.user_value = user_value

    def within(self, segment: str) -> None:
        """Prefix :attr:`path` with the enclosing field name or ``[index]``."""
        if not self.path:
            self.path = segment
        elif self.path.startswith("["):
            self.path = segment + self.path
        else:
            self.path = f"{segment}.{self.path}"


@dataclasses.dataclass(frozen=True, slots=True)
class ClassConverter:
    """Precomputed wire conversion for one dataclass.

    ``user_paths`` lists the paths of its user-value (``object``-typed) fields, nested ones
    included, e.g. ``("state.input", "state.output", "state.custom_status")``.
    """

    cls: type
    encode: Callable[[Any], dict[str, object]]
    decode: Callable[[object], Any]
    user_paths: tuple[str, ...]


def build_converter(cls: type) -> ClassConverter:
    """Build the converter of dataclass ``cls`` (and, inside it, of its nested dataclasses).

    Raises ``TypeError`` for a field type the wire format has no form for: that is a bug in
    the model, found the first time the codec is used rather than when a message is sent.
    """
    return _build(cls, {}, ())


def type_name(value: object) -> str:
    """Qualified Python type name of ``value`` for encode errors (``builtins`` left out)."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def wire_name(value: object) -> str:
    """msgpack type name of a decoded value for decode errors."""
    return _WIRE_NAMES.get(type(value), type(value).__qualname__)


def _build(
    cls: type, done: dict[type, ClassConverter], building: tuple[type, ...]
) -> ClassConverter:
    if cls in done:
        return done[cls]
    if cls in building:
        raise TypeError(f"{cls.__qualname__} contains itself; the wire format has no references")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    encoders: list[tuple[str, Encoder]] = []
    decoders: list[tuple[str, type | None, Decoder, bool]] = []
    user_paths: list[str] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue  # cannot be passed to __init__, so it is derived state, not data
        encode, decode, paths = _converters(hints[field.name], done, (*building, cls))
        encoders.append((field.name, encode))
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        # For str/int/bool fields the decoder only checks the exact type; test that inline.
        exact = hints[field.name] if decode in _EXACT_DECODERS else None
        decoders.append((field.name, exact, decode, required))
        user_paths.extend(_join(field.name, path) for path in paths)
    converter = ClassConverter(
        cls=cls,
        encode=_class_encoder(tuple(encoders)),
        decode=_class_decoder(cls, tuple(decoders)),
        user_paths=tuple(user_paths),
    )
    done[cls] = converter
    return converter


def _join(name: str, path: str) -> str:
    if not path:
        return name
    return name + path if path.startswith("[") else f"{name}.{path}"


def _class_encoder(
    encoders: tuple[tuple[str, Encoder], ...],
) -> Callable[[Any], dict[str, object]]:
    def encode(obj: Any) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, encode_field in encoders:
            try:
                out[name] = encode_field(getattr(obj, name))
            except ConversionError as exc:
                exc.within(name)
                raise
        return out

    return encode


_MISSING: Final = object()


def _class_decoder(
    cls: type, decoders: tuple[tuple[str, type | None, Decoder, bool], ...]
) -> Callable[[object], Any]:
    def decode(raw: object) -> Any:
        if type(raw) is not dict:
            raise ConversionError(f"expected a map of fields, got {wire_name(raw)}")
        kwargs: dict[str, object] = {}
        # Unknown keys in ``raw`` are ignored on purpose: a newer peer may add fields.
        for name, exact, decode_field, required in decoders:
            value = raw.get(name, _MISSING)
            if value is _MISSING:
                if required:
                    exc = ConversionError("required field is missing")
                    exc.within(name)
                    raise exc
                continue
            if type(value) is exact:
                kwargs[name] = value
                continue
            try:
                kwargs[name] = decode_field(value)
            except ConversionError as exc:
                exc.within(name)
                raise
        try:
            return cls(**kwargs)
        except FieldRangeError as exc:  # a value out of range for its field (model._ranges)
            error = ConversionError(exc.rule)
            error.within(exc.field)
            raise error from exc
        except (TypeError, ValueError) as exc:  # e.g. another __post_init__ check of the model
            raise ConversionError(f"invalid {cls.__qualname__}: {exc}") from exc

    return decode


def _converters(
    hint: object, done: dict[type, ClassConverter], building: tuple[type, ...]
) -> tuple[Encoder, Decoder, tuple[str, ...]]:
    """Encoder, decoder and user-value paths for a field declared as ``hint``."""
    simple = _SIMPLE.get(hint)
    if simple is not None:
        return (*simple, ())
    if hint is object or hint is Any:
        return _encode_value, _decode_value, ("",)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) == 1 and len(args) == 2:
            encode, decode, paths = _converters(inner[0], done, building)
            return _optional(encode), _optional(decode), paths
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        encode, decode, paths = _converters(args[0], done, building)
        return _tuple_encoder(encode), _tuple_decoder(decode), tuple(_join("[]", p) for p in paths)
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_encoder(hint), _enum_decoder(hint), ()
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        converter = _build(hint, done, building)
        return _nested_encoder(hint, converter), converter.decode, converter.user_paths
    raise TypeError(f"field type {hint!r} has no wire form in the flowmesh codec")


# --- scalar fields ------------------------------------------------------------------------


def _encode_str(value: object) -> object:
    if isinstance(value, str):
        return value
    raise ConversionError(f"expected str, got {type_name(value)}")


def _decode_str(value: object) -> object:
    if type(value) is str:
        return value
    raise ConversionError(f"expected str, got {wire_name(value)}")


def _encode_int(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        raise ConversionError(f"int {value} is outside the 64-bit range msgpack can carry")
    raise ConversionError(f"expected int, got {type_name(value)}")


def _decode_int(value: object) -> object:
    if type(value) is int:  # excludes bool, which is a separate msgpack type
        return value
    raise ConversionError(f"expected int, got {wire_name(value)}")


def _encode_float(value: object) -> object:
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConversionError(f"expected float, got {type_name(value)}")


def _decode_float(value: object) -> object:
    if type(value) is float:
        return value
    if type(value) is int:  # another implementation may write 2 for 2.0
        return float(value)
    raise ConversionError(f"expected float, got {wire_name(value)}")


def _encode_bool(value: object) -> object:
    if isinstance(value, bool):
        return value
    raise ConversionError(f"expected bool, got {type_name(value)}")


def _decode_bool(value: object) -> object:
    if type(value) is bool:
        return value
    raise ConversionError(f"expected bool, got {wire_name(value)}")


def _encode_datetime(value: object) -> object:
    if not isinstance(value, datetime):
        raise ConversionError(f"expected datetime, got {type_name(value)}")
    if value.utcoffset() is None:
        # A naive datetime has no instant; guessing local time or UTC would corrupt timers.
        raise ConversionError("naive datetime; use a timezone-aware one such as datetime.now(UTC)")
    return (value - EPOCH) // _MICROSECOND


def _decode_datetime(value: object) -> object:
    if type(value) is not int:
        raise ConversionError(f"expected int microseconds since the epoch, got {wire_name(value)}")
    try:
        return EPOCH + timedelta(microseconds=value)
    except OverflowError:
        raise ConversionError(f"{value} microseconds is outside the datetime range") from None


def _bytes(value: object) -> object:
    """Both ways: a bytes field is a bin on the wire (nothing else is taken for it)."""
    if type(value) is bytes:
        return value
    raise ConversionError(f"expected bytes (bin), got {wire_name(value)}")


def _encode_timedelta(value: object) -> object:
    if isinstance(value, timedelta):
        return value // _MICROSECOND
    raise ConversionError(f"expected timedelta, got {type_name(value)}")


def _decode_timedelta(value: object) -> object:
    if type(value) is not int:
        raise ConversionError(f"expected int microseconds, got {wire_name(value)}")
    try:
        return timedelta(microseconds=value)
    except OverflowError:
        raise ConversionError(f"{value} microseconds is outside the timedelta range") from None


_SIMPLE: Final[dict[object, tuple[Encoder, Decoder]]] = {
    str: (_encode_str, _decode_str),
    int: (_encode_int, _decode_int),
    float: (_encode_float, _decode_float),
    bool: (_encode_bool, _decode_bool),
    bytes: (_bytes, _bytes),
    datetime: (_encode_datetime, _decode_datetime),
    timedelta: (_encode_timedelta, _decode_timedelta),
}


_EXACT_DECODERS: Final = frozenset({_decode_str, _decode_int, _decode_bool})


# --- user values --------------------------------------------------------------------------


def _encode_value(value: object) -> object:
    kind = type(value)
    if kind in _PLAIN_SCALARS or (kind is int and _INT_MIN <= value <= _INT_MAX):  # type: ignore[operator]
        return value
    if not is_plain_value(value):
        # The fast check is conservative; check_value decides, and words the error.
        try:
            check_value(value, "")  # the codec re-checks with the real where for its message
        except SerializationError as exc:
            raise ConversionError(str(exc), value=value, user_value=True) from None
    return value


def is_plain_value(root: object) -> bool:  # noqa: C901 - one branch per wire type, inline for speed
    """Fast, conservative form of :func:`flowmesh.model.check_value` for the hot path.

    True only for exact built-in types that ``check_value`` accepts (same depth limit), so a
    True needs no further check; False means "ask check_value", which also accepts subclasses
    such as a ``StrEnum`` member. Iterative and free of per-item string formatting, which
    makes it several times faster than ``check_value`` on large values.
    """
    kind = type(root)
    if kind in _PLAIN_SCALARS:
        return True
    if kind is int:
        return _INT_MIN <= root <= _INT_MAX  # type: ignore[operator]
    if kind is not list and kind is not tuple and kind is not dict:
        return False
    stack: list[tuple[Any, int]] = [(root, 0)]
    pop = stack.pop
    push = stack.append
    while stack:
        node, depth = pop()
        if type(node) is dict:
            for key in node:
                if type(key) is not str and type(key) is not int:
                    return False
            node = node.values()
        if not node:
            continue
        if depth >= MAX_VALUE_DEPTH:  # its items would sit deeper than check_value allows
            return False
        if len(node) > _SCAN_FROM and set(map(type, node)) <= _PLAIN_SCALARS:
            continue  # a long run of scalars, checked at C speed
        for item in node:
            kind = type(item)
            if kind in _PLAIN_SCALARS:
                continue
            if kind is int:
                if _INT_MIN <= item <= _INT_MAX:
                    continue
                return False
            if kind is list or kind is tuple or kind is dict:
                push((item, depth + 1))
                continue
            return False
    return True


def _decode_value(value: object) -> object:
    # Already vetted by the wire layer: msgpack-native types only, str/int map keys, bounded
    # depth. Arrays stay lists (tuples are not restored).
    return value


# --- composite fields ---------------------------------------------------------------------


def _optional(convert: Callable[[Any], object]) -> Callable[[Any], object]:
    def optional(value: object) -> object:
        return None if value is None else convert(value)

    return optional


def _tuple_encoder(encode: Encoder) -> Encoder:
    def encode_tuple(value: object) -> object:
        if not isinstance(value, tuple | list):
            raise ConversionError(f"expected tuple, got {type_name(value)}")
        out: list[object] = []
        for index, item in enumerate(value):
            try:
                out.append(encode(item))
            except ConversionError as exc:
                exc.within(f"[{index}]")
                raise
        return out

    return encode_tuple


def _tuple_decoder(decode: Decoder) -> Decoder:
    def decode_tuple(value: object) -> object:
        if type(value) is not list:
            raise ConversionError(f"expected array, got {wire_name(value)}")
        out: list[object] = []
        for index, item in enumerate(value):
            try:
                out.append(decode(item))
            except ConversionError as exc:
                exc.within(f"[{index}]")
                raise
        return tuple(out)

    return decode_tuple


def _enum_encoder(cls: type[enum.Enum]) -> Encoder:
    def encode_enum(value: object) -> object:
        if isinstance(value, cls):
            return value.value
        try:
            return cls(value).value  # a plain value such as "COMPLETED" is accepted
        except (ValueError, TypeError):
            raise ConversionError(f"{value!r} is not a {cls.__qualname__}") from None

    return encode_enum


def _enum_decoder(cls: type[enum.Enum]) -> Decoder:
    # Compare wire types exactly so that, say, true is not taken for an IntEnum member 1.
    value_types = frozenset(type(member.value) for member in cls)
    names = ", ".join(repr(member.value) for member in cls)

    def decode_enum(value: object) -> object:
        if type(value) in value_types:
            try:
                return cls(value)
            except ValueError:
                pass
        shown = repr(value) if type(value) in (str, int) else wire_name(value)
        raise ConversionError(f"{shown[:80]} is not a {cls.__qualname__} (one of {names})")

    return decode_enum


def _nested_encoder(cls: type, converter: ClassConverter) -> Encoder:
    def encode_nested(value: object) -> object:
        if isinstance(value, cls):
            return converter.encode(value)
        raise ConversionError(f"expected {cls.__qualname__}, got {type_name(value)}")

    return encode_nested
