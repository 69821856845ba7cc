"""The msgpack codec for flowmesh messages, history events and workflow states.

:class:`Codec` turns the model's frozen dataclasses into versioned msgpack envelopes and back,
refusing values msgpack cannot carry (``SerializationError``) and any bytes that are not a
valid envelope (``DecodeError``). With a :class:`PayloadCodec` or a
:class:`BoundPayloadCodec` (such as :class:`flowmesh.security.EncryptionCodec`, which binds
each value to its :class:`PayloadContext`) it encodes every user value and failure text
through it. The wire format is specified in docs/protocol-codec.md.
"""

from flowmesh.codec._codec import DEFAULT_LIMITS, FORMAT_VERSION, Codec, CodecLimits
from flowmesh.codec._payload import (
    PAYLOAD_MARKER,
    PAYLOAD_SCHEME,
    BoundPayloadCodec,
    PayloadCodec,
    PayloadContext,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "PAYLOAD_MARKER",
    "PAYLOAD_SCHEME",
    "BoundPayloadCodec",
    "Codec",
    "CodecLimits",
    "PayloadCodec",
    "PayloadContext",
]
