"""Payload keys from the environment: ``FLOWMESH_PAYLOAD_KEYS="k2:<base64>,k1:<base64>"``.

Error messages name the key id and what is wrong with it, never the key material.
"""

from __future__ import annotations

import binascii
import os
from base64 import b64decode
from collections.abc import Mapping
from typing import Final

from flowmesh._errors import ConfigurationError
from flowmesh.security._encryption import KEY_BYTES, EncryptionCodec, check_key_id

PAYLOAD_KEYS_ENV: Final = "FLOWMESH_PAYLOAD_KEYS"
"""Environment variable holding the keyring; the first key is the active one."""

ALLOW_PLAINTEXT_ENV: Final = "FLOWMESH_PAYLOAD_ALLOW_PLAINTEXT"
"""Set to ``1`` while switching a running deployment to encryption (reads old plaintext)."""

ALLOW_UNBOUND_ENV: Final = "FLOWMESH_PAYLOAD_ALLOW_UNBOUND"
"""Set to ``1`` while migrating data encrypted in format 1 (not bound to its app, instance and
field): such values are read; everything written is bound."""

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


def parse_payload_keys(text: str, *, source: str = PAYLOAD_KEYS_ENV) -> dict[str, bytes]:
    """Parse ``"k2:<base64 of 32 bytes>,k1:<base64>"`` into an ordered keyring.

    Whitespace around items is ignored; standard and URL-safe base64 are accepted, with or
    without padding. Raises :class:`~flowmesh.ConfigurationError` (naming ``source`` and the
    key id, never the key) for an empty keyring, a malformed item, a duplicate id, invalid
    base64 or a key that is not 32 bytes.
    """
    keys: dict[str, bytes] = {}
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ConfigurationError(f"{source} is empty: give at least one key as <id>:<base64>")
    for position, item in enumerate(items, 1):
        if not item:
            raise ConfigurationError(f"{source}: item {position} is empty (stray comma?)")
        key_id, sep, encoded = item.partition(":")
        key_id = key_id.strip()
        if not sep:
            raise ConfigurationError(
                f"{source}: item {position} is not <id>:<base64> (no ':' after the key id)"
            )
        try:
            check_key_id(key_id)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: item {position}: {exc}") from None
        if key_id in keys:
            raise ConfigurationError(f"{source}: key id {key_id!r} appears twice")
        keys[key_id] = _decode_key(key_id, encoded.strip(), source)
    return keys


def _decode_key(key_id: str, encoded: str, source: str) -> bytes:
    if not encoded:
        raise ConfigurationError(f"{source}: key {key_id!r} has no value after ':'")
    text = encoded.replace("-", "+").replace("_", "/")  # accept URL-safe base64 too
    text += "=" * (-len(text) % 4)
    try:
        key = b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"{source}: key {key_id!r} is not valid base64 "
            "(generate one with: openssl rand -base64 32)"
        ) from None
    if len(key) != KEY_BYTES:
        raise ConfigurationError(
            f"{source}: key {key_id!r} is {len(key)} bytes; AES-256 keys are {KEY_BYTES} bytes "
            "(generate one with: openssl rand -base64 32)"
        )
    return key


def payload_codec_from_env(environ: Mapping[str, str] | None = None) -> EncryptionCodec | None:
    """The :class:`EncryptionCodec` configured by ``FLOWMESH_PAYLOAD_KEYS``, or None if unset.

    Set but empty is an error, not "no encryption": a secret that failed to mount must not
    silently turn encryption off.
    """
    env = os.environ if environ is None else environ
    text = env.get(PAYLOAD_KEYS_ENV)
    if text is None:
        return None
    return EncryptionCodec(parse_payload_keys(text), allow_unbound=allow_unbound_from_env(env))


def allow_plaintext_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``FLOWMESH_PAYLOAD_ALLOW_PLAINTEXT`` is set to a true value (1/true/yes/on)."""
    return _flag(ALLOW_PLAINTEXT_ENV, environ)


def allow_unbound_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``FLOWMESH_PAYLOAD_ALLOW_UNBOUND`` is set to a true value (1/true/yes/on)."""
    return _flag(ALLOW_UNBOUND_ENV, environ)


def _flag(name: str, environ: Mapping[str, str] | None) -> bool:
    env = os.environ if environ is None else environ
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be 1/true/yes/on or 0/false/no/off")
