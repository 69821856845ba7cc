"""``EncryptionCodec``: AES-256-GCM for user values, with key ids and rotation.

Ciphertext format (docs/security-payloads.md)::

    b"fmenc2" | len(key_id) (1 byte) | key_id (ASCII) | nonce (12 bytes) | ciphertext + tag (16)

The AES-GCM associated data is the header (``b"fmenc2"``, the key id length and the key id)
followed by the value's :class:`~flowmesh.codec.PayloadContext` (hosting app, instance, field),
so neither the format version nor the key id can be changed, nor the ciphertext moved to
another app, instance or field, without the tag failing. Version 1 (``b"fmenc1"``) had only
the header as associated data; it is read only when explicitly allowed (``allow_unbound``),
for migrating data written before. The primitive is ``cryptography``'s ``AESGCM``; nothing
here implements cryptography itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from flowmesh._errors import ConfigurationError, DecodeError
from flowmesh.codec import PayloadContext

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC: Final = b"fmenc2"
"""First bytes of every value :class:`EncryptionCodec` writes (format version 2)."""

MAGIC_UNBOUND: Final = b"fmenc1"
"""First bytes of format version 1, whose values are not bound to their context."""

KEY_BYTES: Final = 32
"""AES-256: every key is exactly 32 bytes."""

NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16

_KEY_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_key_id(key_id: object) -> str:
    """Return ``key_id`` if valid (1-64 of ``A-Z a-z 0-9 . _ -``), else ``ConfigurationError``."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        shown = repr(key_id)[:70] if isinstance(key_id, str) else type(key_id).__qualname__
        raise ConfigurationError(
            f"invalid payload key id {shown}: use 1-64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return key_id


class EncryptionCodec:
    """A :class:`~flowmesh.codec.BoundPayloadCodec` that encrypts with AES-256-GCM.

    ``keys`` is an ordered keyring ``{key_id: 32-byte key}``. The ``active`` key (default: the
    first) encrypts; every key decrypts, so rotating is: put the new key first, keep the old
    ones until nothing encrypted with them is left (docs/security-payloads.md). Each value
    gets a fresh random 96-bit nonce and is bound to its context (app, instance, field).
    Opening raises :class:`~flowmesh.DecodeError` for anything that is not a value encrypted
    with one of the keys for that context: wrong format, unknown key id, truncated or
    tampered bytes, a value moved from elsewhere. ``allow_unbound`` also opens format 1
    values, which carry no context (written by flowmesh before binding; for migration only).
    """

    __slots__ = (
        "_active",
        "_active_header",
        "_aead",
        "_allow_unbound",
        "_ciphers",
        "_invalid_tag",
    )

    def __init__(
        self,
        keys: Mapping[str, bytes],
        *,
        active: str | None = None,
        allow_unbound: bool = False,
    ) -> None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not keys:
            raise ConfigurationError("EncryptionCodec needs at least one key")
        ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            check_key_id(key_id)
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
                size = len(key) if isinstance(key, bytes | bytearray) else type(key).__qualname__
                raise ConfigurationError(
                    f"payload key {key_id!r} must be {KEY_BYTES} bytes (AES-256), got {size}"
                )
            ciphers[key_id] = AESGCM(bytes(key))
        if active is None:
            active = next(iter(keys))
        if active not in ciphers:
            raise ConfigurationError(
                f"active payload key {active!r} is not in the keyring ({', '.join(ciphers)})"
            )
        self._ciphers = ciphers
        self._active = active
        self._active_header = _header(active)
        self._aead = ciphers[active]
        self._invalid_tag = InvalidTag
        self._allow_unbound = allow_unbound

    @property
    def active_key_id(self) -> str:
        """The id of the key new values are encrypted with."""
        return self._active

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this codec decrypts, in keyring order."""
        return tuple(self._ciphers)

    @property
    def allow_unbound(self) -> bool:
        """Whether format 1 values (not bound to a context) are still opened."""
        return self._allow_unbound

    def __repr__(self) -> str:  # never show key material
        return f"EncryptionCodec(active={self._active!r}, key_ids={list(self._ciphers)!r})"

    def seal(self, data: bytes, context: PayloadContext) -> bytes:
        """Encrypt ``data`` for ``context`` with the active key and a fresh random nonce."""
        nonce = os.urandom(NONCE_BYTES)
        header = self._active_header
        return header + nonce + self._aead.encrypt(nonce, data, header + context.as_bytes())

    def open(self, data: bytes, context: PayloadContext) -> bytes:
        """Decrypt bytes made by :meth:`seal` for ``context`` with any key of the keyring."""
        if data.startswith(MAGIC):
            bound = True
        elif data.startswith(MAGIC_UNBOUND):
            if not self._allow_unbound:
                raise DecodeError(
                    "encrypted in format fmenc1, which does not bind a value to its app, "
                    "instance and field; refused unless unbound values are allowed "
                    "(FLOWMESH_PAYLOAD_ALLOW_UNBOUND=1, while migrating)"
                )
            bound = False
        else:
            raise DecodeError(
                "not an encrypted payload: expected the fmenc2 format "
                "(is the writer using another payload codec?)"
            )
        at = len(MAGIC)  # both versions have 6-byte magics
        if len(data) <= at:
            raise DecodeError("truncated encrypted payload: no key id")
        id_len = data[at]
        at += 1
        raw_id = data[at : at + id_len]
        at += id_len
        if len(raw_id) != id_len:
            raise DecodeError("truncated encrypted payload: key id cut short")
        if len(data) < at + NONCE_BYTES + TAG_BYTES:
            raise DecodeError("truncated encrypted payload: shorter than nonce and tag")
        try:
            key_id = raw_id.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("encrypted payload has a malformed key id") from None
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            shown = repr(key_id) if _KEY_ID.fullmatch(key_id) else "(malformed)"
            raise DecodeError(
                f"encrypted with unknown key id {shown}; this keyring has "
                f"{', '.join(map(repr, self._ciphers))} (add the key to FLOWMESH_PAYLOAD_KEYS)"
            )
        nonce = data[at : at + NONCE_BYTES]
        associated = data[:at] + context.as_bytes() if bound else data[:at]
        try:
            return cipher.decrypt(nonce, data[at + NONCE_BYTES :], associated)
        except self._invalid_tag:
            moved = (
                ", or the value was encrypted for another place than "
                f"{_shown(context.field)} of instance {_shown(context.instance_id)} on app "
                f"{_shown(context.app_id)} (moved from another app, instance or field)"
                if bound
                else ""
            )
            raise DecodeError(
                f"encrypted payload failed authentication with key {key_id!r}: the bytes were "
                f"tampered with, or the key with this id is not the one that encrypted them{moved}"
            ) from None


def _header(key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return MAGIC + bytes([len(raw)]) + raw


def _shown(text: str) -> str:
    """``repr`` of an ID from an envelope, cut short: error messages stay readable."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."
