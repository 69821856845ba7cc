"""Security helpers: sender policy, message validation, payload encryption, secret masking.

* :class:`EncryptionCodec` - a :class:`~flowmesh.codec.BoundPayloadCodec` encrypting every
  user value with AES-256-GCM, bound to its app, instance and field (a
  :class:`~flowmesh.codec.PayloadContext`), with key ids and rotation; give it to
  ``Codec(payload_codec=...)`` so RabbitMQ and Redis only ever hold ciphertext of user data.
* :func:`parse_payload_keys` / :func:`payload_codec_from_env` - the keyring from
  ``FLOWMESH_PAYLOAD_KEYS="k2:<base64>,k1:<base64>"`` (first = active);
  ``FLOWMESH_PAYLOAD_ALLOW_UNBOUND=1`` also reads values of the unbound format 1.
* :func:`mask_secrets` - URL passwords to ``***`` in any text; :func:`mask_log_event` is the
  structlog processor and :class:`MaskingFormatter` the stdlib formatter that apply it.
* :func:`message_problem` - identifier checks on decoded messages (the worker dead-letters
  what fails them).
* The least-privilege plan (``flowmesh security plan|apply``) is in :mod:`flowmesh.ops`, the
  operations layer above the transport and the store.
* :class:`AppUsers` / :class:`SenderPolicy` - which app a broker-verified ``user_id`` is, and
  which messages it may send (``WorkerOptions.app_user_pattern``).
* :class:`TLSConfig` - CA, client certificate and verification for ``amqps://``/``rediss://``.

``cryptography`` is imported only when an :class:`EncryptionCodec` is built.
See docs/security-payloads.md and docs/security-model.md.
"""

from flowmesh._masking import (
    MASK,
    MaskingFormatter,
    mask_log_event,
    mask_secrets,
    mask_url,
    mask_value,
)
from flowmesh._tls import TLSConfig
from flowmesh.codec import BoundPayloadCodec, PayloadCodec, PayloadContext
from flowmesh.security._encryption import (
    KEY_BYTES,
    MAGIC,
    MAGIC_UNBOUND,
    EncryptionCodec,
    check_key_id,
)
from flowmesh.security._keys import (
    ALLOW_PLAINTEXT_ENV,
    ALLOW_UNBOUND_ENV,
    PAYLOAD_KEYS_ENV,
    allow_plaintext_from_env,
    allow_unbound_from_env,
    parse_payload_keys,
    payload_codec_from_env,
)
from flowmesh.security._senders import DEFAULT_APP_USER_PATTERN, AppUsers, SenderPolicy
from flowmesh.security._validation import message_problem

__all__ = [
    "ALLOW_PLAINTEXT_ENV",
    "ALLOW_UNBOUND_ENV",
    "DEFAULT_APP_USER_PATTERN",
    "KEY_BYTES",
    "MAGIC",
    "MAGIC_UNBOUND",
    "MASK",
    "PAYLOAD_KEYS_ENV",
    "AppUsers",
    "BoundPayloadCodec",
    "EncryptionCodec",
    "MaskingFormatter",
    "PayloadCodec",
    "PayloadContext",
    "SenderPolicy",
    "TLSConfig",
    "allow_plaintext_from_env",
    "allow_unbound_from_env",
    "check_key_id",
    "mask_log_event",
    "mask_secrets",
    "mask_url",
    "mask_value",
    "message_problem",
    "parse_payload_keys",
    "payload_codec_from_env",
]
