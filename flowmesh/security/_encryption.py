"""``EncryptionCodec``: AES-256-GCM for user values, with key ids and rotation.

Ciphertext format (docs/security-payloads.md)::

    b"fmenc1" | len(key_id) (1 byte) | key_id (ASCII) | nonce (12 bytes) | ciphertext + tag (16)

The header (``b"fmenc1"``, the key id length and the key id) is the AES-GCM associated data,
so neither the format version nor the key id can be changed without the tag failing. The
primitive is ``cryptography``'s ``AESGCM``; nothing here implements cryptography itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from flowmesh._errors import ConfigurationError, DecodeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC: Final = b"fmenc1"
"""First bytes of every value :class:`EncryptionCodec` writes (format version 1)."""

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
    """A :class:`~flowmesh.codec.PayloadCodec` that encrypts with AES-256-GCM.

    ``keys`` is an ordered keyring ``{key_id: 32-byte key}``. The ``active`` key (default: the
    first) encrypts; every key decrypts, so rotating is: put the new key first, keep the old
    ones until nothing encrypted with them is left (docs/security-payloads.md). Each value
    gets a fresh random 96-bit nonce. Decoding raises :class:`~flowmesh.DecodeError` for
    anything that is not a value encrypted with one of the keys: wrong format, unknown key
    id, truncated or tampered bytes.
    """

    __slots__ = ("_active", "_active_header", "_aead", "_ciphers", "_invalid_tag")

    def __init__(self, keys: Mapping[str, bytes], *, active: str | None = None) -> None:
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

    @property
    def active_key_id(self) -> str:
        """The id of the key new values are encrypted with."""
        return self._active

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this codec decrypts, in keyring order."""
        return tuple(self._ciphers)

    def __repr__(self) -> str:  # never show key material
        return f"EncryptionCodec(active={self._active!r}, key_ids={list(self._ciphers)!r})"

    def encode(self, data: bytes) -> bytes:
        """Encrypt ``data`` with the active key and a fresh random nonce."""
        nonce = os.urandom(NONCE_BYTES)
        header = self._active_header
        return header + nonce + self._aead.encrypt(nonce, data, header)

    def decode(self, data: bytes) -> bytes:
        """Decrypt bytes made by :meth:`encode` with any key of the keyring."""
        if not data.startswith(MAGIC):
            raise DecodeError(
                "not an encrypted payload: expected the fmenc1 format "
                "(is the writer using another payload codec?)"
            )
        at = len(MAGIC)
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
        try:
            return cipher.decrypt(nonce, data[at + NONCE_BYTES :], data[:at])
        except self._invalid_tag:
            raise DecodeError(
                f"encrypted payload failed authentication with key {key_id!r}: the bytes were "
                "tampered with, or the key with this id is not the one that encrypted them"
            ) from None


def _header(key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return MAGIC + bytes([len(raw)]) + raw
