"""The msgpack layer: packing with per-thread packers, and defensive unpacking.

Everything that touches the (untyped) msgpack package lives here, so the rest of the codec is
checked by mypy. Unpacking treats its input as hostile: size, string and collection limits
are enforced by msgpack itself, ext types (including the Timestamp ext) are refused, and the
nesting depth and map-key types of the result are checked without recursion.
"""

from __future__ import annotations

import threading
from typing import Any, Final, NoReturn

import msgpack

from flowmesh._errors import DecodeError

# Map keys a user value may have on the wire: check_value allows only these when encoding.
_KEY_TYPES: Final = frozenset({str, int})
_CONTAINERS: Final = frozenset({list, dict})
# Containers longer than this are pre-scanned at C speed before any Python-level loop.
_SCAN_FROM: Final = 8


class _ExtTypeError(Exception):
    """Raised from the ext hook to abort unpacking; never escapes this module."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _refuse_ext(code: int, data: bytes) -> object:
    raise _ExtTypeError(code)


class Wire:
    """Packs and unpacks msgpack under fixed limits; safe to share between threads."""

    __slots__ = ("_local", "_max_bytes", "_max_collection_len", "_max_depth")

    def __init__(self, max_bytes: int, max_depth: int, max_collection_len: int) -> None:
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._max_collection_len = max_collection_len
        # msgpack.Packer keeps an internal buffer, so a shared one is not thread-safe; one per
        # thread is still about twice as fast as msgpack.packb, which builds a Packer per call.
        self._local = threading.local()

    def pack(self, obj: object) -> bytes:
        """Pack ``obj``; msgpack's ``TypeError``/``ValueError``/``OverflowError`` propagate."""
        local = self._local
        try:
            packer = local.packer
        except AttributeError:
            # datetime=False: the codec converts datetimes itself and never emits ext types.
            packer = local.packer = msgpack.Packer(use_bin_type=True, datetime=False)
        data: bytes = packer.pack(obj)
        return data

    def unpack(self, data: bytes) -> object:
        """Unpack one msgpack value from ``data`` or raise :class:`DecodeError` saying why."""
        size = len(data)
        if size > self._max_bytes:
            raise DecodeError(
                f"payload is {size} bytes, more than the {self._max_bytes}-byte limit "
                "(CodecLimits.max_message_bytes)"
            )
        # msgpack preallocates an array when it reads its header, so cap declared lengths by
        # what the input could hold (an item takes at least one byte, a map entry two).
        limit = self._max_collection_len
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=False,  # user dicts may have int keys; _check_tree vets keys
                ext_hook=_refuse_ext,
                max_str_len=size,
                max_bin_len=size,
                max_array_len=min(limit, size),
                max_map_len=min(limit, size // 2),
                # Timestamp ext (-1) bypasses ext_hook, so ext payloads are refused by length too.
                max_ext_len=0,
            )
        except _ExtTypeError as exc:
            raise DecodeError(f"msgpack ext type {exc.code} is not allowed") from None
        except msgpack.ExtraData as exc:
            raise DecodeError("trailing bytes after the msgpack value") from exc
        except msgpack.StackError as exc:
            raise DecodeError("nesting too deep for the msgpack unpacker") from exc
        except msgpack.FormatError as exc:
            raise DecodeError("not valid msgpack (reserved type byte)") from exc
        except UnicodeDecodeError as exc:
            raise DecodeError(f"a string is not valid UTF-8: {exc.reason}") from exc
        except TypeError as exc:  # a map key that is itself an array or a map
            raise DecodeError(f"invalid map key: {exc}") from exc
        except (msgpack.UnpackException, ValueError, OverflowError, RecursionError) as exc:
            reason = str(exc)
            if "max_ext_len" in reason:
                reason = "msgpack ext types are not allowed"
            elif "max_" in reason:
                reason = f"a string, binary, array or map is longer than allowed ({reason})"
            raise DecodeError(f"invalid msgpack: {reason or type(exc).__name__}") from exc
        except MemoryError as exc:  # only reachable through lengths the input declares
            raise DecodeError("msgpack input declares more data than memory allows") from exc
        _check_tree(obj, self._max_depth)
        return obj


def _check_tree(root: object, max_depth: int) -> None:
    """Reject nesting deeper than ``max_depth`` and map keys other than str or int.

    Iterative, so hostile input cannot exhaust the Python stack. Written for speed, as it runs
    on every decode: exact ``type() is`` tests, and large containers are first scanned at C
    speed with ``map(type, ...)`` so that a long list of scalars costs no Python loop.
    """
    if type(root) is not list and type(root) is not dict:
        return
    stack: list[tuple[Any, int]] = [(root, 1)]
    pop = stack.pop
    push = stack.append
    while stack:
        node, depth = pop()
        if depth > max_depth:
            raise DecodeError(f"nesting deeper than {max_depth} levels (CodecLimits.max_depth)")
        if type(node) is dict:
            if len(node) > _SCAN_FROM:
                if not set(map(type, node)) <= _KEY_TYPES:
                    _bad_key(node)
            else:
                for key in node:
                    if type(key) is not str and type(key) is not int:
                        _bad_key(node)
            node = node.values()
        if len(node) > _SCAN_FROM and _CONTAINERS.isdisjoint(map(type, node)):
            continue
        for child in node:
            kind = type(child)
            if kind is list or kind is dict:
                push((child, depth + 1))


def _bad_key(node: dict[object, object]) -> NoReturn:
    bad = next(key for key in node if type(key) not in _KEY_TYPES)
    raise DecodeError(
        f"map key of type {type(bad).__qualname__}; only str and int keys are allowed"
    )
