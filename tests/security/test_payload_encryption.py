"""Payload encryption: RabbitMQ and Redis only ever hold ciphertext of user data.

Unit tests of the payload codec layer of ``Codec`` and of ``EncryptionCodec`` (round trips,
wire form, rotation, tampering, key loading), then the embedded backend, then real workers on
RabbitMQ and Redis whose queues and keys are scanned for the plaintext.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aio_pika
import msgpack
import pytest
import redis

from flowmesh import (
    ActivityContext,
    ActivityFailedError,
    App,
    Client,
    ClientOptions,
    RetryPolicy,
    WorkflowContext,
)
from flowmesh._errors import (
    ConfigurationError,
    DecodeError,
    PayloadTooLargeError,
    SerializationError,
)
from flowmesh.cli._config import build_codec
from flowmesh.codec import (
    PAYLOAD_MARKER,
    BoundPayloadCodec,
    Codec,
    CodecLimits,
    PayloadCodec,
    PayloadContext,
)
from flowmesh.model import (
    ActivityCompleted,
    ActivityResult,
    ActivityScheduled,
    ActivityTask,
    ChildResult,
    ChildWorkflowCompleted,
    HistoryEvent,
    Message,
    RaiseEvent,
    StartWorkflow,
    StateReply,
    TimerDue,
    WorkflowState,
)
from flowmesh.security import (
    MAGIC,
    MAGIC_UNBOUND,
    EncryptionCodec,
    parse_payload_keys,
    payload_codec_from_env,
)
from flowmesh.testing import TestEnvironment
from flowmesh.transport import Outgoing, QueueKind
from tests.harness.processes import REPO, Services, WorkerProcesses
from tests.security.samples import (
    AT,
    EVENTS,
    FAILURE,
    HOST,
    KEY1,
    KEY2,
    MESSAGES,
    SECRET,
    STATE,
    random_key,
)

SECRET_BYTES = SECRET.encode()


def codec_with(keys: dict[str, bytes], **kwargs: Any) -> Codec:
    return Codec(payload_codec=EncryptionCodec(keys, **kwargs))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


ENC = codec_with({"k1": KEY1})
HERE = PayloadContext(HOST, "order-17", "RaiseEvent.data")
"""A context for EncryptionCodec tests that are not about contexts."""


def fields_of(data: bytes) -> dict[str, Any]:
    envelope = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert isinstance(envelope, list) and len(envelope) == 3
    fields = envelope[2]
    assert isinstance(fields, dict)
    return fields


# -- the codec with a payload codec --------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_encrypted_without_plaintext(message: Message) -> None:
    data = ENC.encode_message(message, app_id=HOST)
    assert ENC.decode_message(data, app_id=HOST) == message
    assert SECRET_BYTES not in data


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_history_event_round_trips_encrypted_without_plaintext(
    event: HistoryEvent,
) -> None:
    data = ENC.encode_event(event, **AT)
    assert ENC.decode_event(data, **AT) == event
    assert SECRET_BYTES not in data


def test_workflow_state_round_trips_encrypted_without_plaintext() -> None:
    data = ENC.encode_state(STATE, **AT)
    assert ENC.decode_state(data, **AT) == STATE
    assert SECRET_BYTES not in data
    # Routing metadata stays readable: IDs, names, status.
    for visible in (b"order-17", b"process_order", b"orders", b"FAILED", b"charge"):
        assert visible in data


def test_samples_carry_the_secret_in_plaintext_for_every_kind_with_protected_fields() -> None:
    """Otherwise the tests above would pass vacuously."""
    from flowmesh.codec._codec import _kinds

    plain = Codec()
    carrying = {type(m) for m in [*MESSAGES, *EVENTS] if SECRET_BYTES in _plain_bytes(plain, m)}
    protected = {k.converter.cls for k in _kinds().by_type.values() if k.protected}
    assert protected - {WorkflowState} == carrying
    assert SECRET_BYTES in plain.encode_state(STATE, **AT)


def _plain_bytes(codec: Codec, obj: Any) -> bytes:
    try:
        return codec.encode_message(obj, app_id=HOST)
    except TypeError:
        return codec.encode_event(obj, **AT)


def test_wire_form_is_a_tagged_fields_map_with_bin_protected_fields() -> None:
    message = ActivityResult("i-1", 3, 2, output={"x": SECRET})
    fields = fields_of(ENC.encode_message(message, app_id=HOST))
    assert fields[PAYLOAD_MARKER] == 1
    assert isinstance(fields["output"], bytes) and fields["output"].startswith(MAGIC + b"\x02k1")
    assert fields["instance_id"] == "i-1" and fields["seq"] == 3 and fields["attempt"] == 2
    assert fields["failure"] is None  # an absent failure has no texts to protect
    # The plaintext of an encoded field is the msgpack of the value.
    where = PayloadContext(HOST, "i-1", "ActivityResult.output")
    opened = EncryptionCodec({"k1": KEY1}).open(fields["output"], where)
    assert msgpack.unpackb(opened, raw=False) == {"x": SECRET}


def test_failure_message_and_stack_are_encrypted_but_error_type_is_not() -> None:
    message = next(m for m in MESSAGES if isinstance(m, ActivityResult) and m.failure)
    failure = fields_of(ENC.encode_message(message, app_id=HOST))["failure"]
    assert failure["error_type"] == "builtins.ValueError"
    assert isinstance(failure["message"], bytes) and isinstance(failure["stack_trace"], bytes)
    assert failure["non_retryable"] is True and failure["app_id"] == "payments"


def test_nil_user_values_are_encrypted_too_so_presence_does_not_show() -> None:
    fields = fields_of(ENC.encode_message(StartWorkflow("i-1", "wf", "app"), app_id=HOST))
    assert isinstance(fields["input"], bytes)


def test_messages_without_user_data_are_unchanged_by_the_payload_codec() -> None:
    for message in (TimerDue("i-1", 4), *[m for m in MESSAGES if "Control" in repr(type(m))]):
        assert ENC.encode_message(message, app_id=HOST) == Codec().encode_message(
            message, app_id=HOST
        )


@pytest.mark.parametrize("obj", [*MESSAGES, *EVENTS], ids=lambda o: type(o).__name__)
def test_without_a_payload_codec_nothing_is_tagged_or_encoded(obj: Any) -> None:
    data = _plain_bytes(Codec(payload_codec=None), obj)
    assert PAYLOAD_MARKER.encode() not in data and MAGIC not in data
    assert PAYLOAD_MARKER not in fields_of(data)
    assert PAYLOAD_MARKER.encode() not in Codec().encode_state(STATE, **AT)


def test_each_value_gets_a_fresh_nonce() -> None:
    message = RaiseEvent("i-1", "e", SECRET)
    first, second = (
        ENC.encode_message(message, app_id=HOST),
        ENC.encode_message(message, app_id=HOST),
    )
    assert first != second
    one, two = fields_of(first)["data"], fields_of(second)["data"]
    assert one[:9] == two[:9] == MAGIC + b"\x02k1"  # same header
    assert one[9:21] != two[9:21]  # different 96-bit nonces
    assert len(one) == len(two) == 9 + 12 + len(msgpack.packb(SECRET)) + 16


def test_size_limit_applies_to_the_encrypted_message() -> None:
    small = Codec(CodecLimits(max_message_bytes=256), payload_codec=EncryptionCodec({"k": KEY1}))
    small.encode_message(ActivityTask("i", "h", "a", 1, 1, "n", "x" * 60), app_id=HOST)
    with pytest.raises(PayloadTooLargeError, match="limit"):
        small.encode_message(ActivityTask("i", "h", "a", 1, 1, "n", "x" * 250), app_id=HOST)


# -- refusing what a codec cannot or must not read ------------------------------------------------


def test_a_codec_without_keys_refuses_encrypted_blobs_with_a_clear_reason() -> None:
    data = ENC.encode_message(MESSAGES[0], app_id=HOST)
    with pytest.raises(DecodeError, match=r"encoded by a payload codec.*FLOWMESH_PAYLOAD_KEYS"):
        Codec().decode_message(data, app_id=HOST)
    with pytest.raises(DecodeError, match="payload codec"):
        Codec().decode_state(ENC.encode_state(STATE, **AT), **AT)


def test_a_codec_with_keys_refuses_plaintext_user_values_unless_allowed() -> None:
    plain = Codec().encode_message(MESSAGES[0], app_id=HOST)
    with pytest.raises(DecodeError, match="not encoded"):
        ENC.decode_message(plain, app_id=HOST)
    migrating = Codec(payload_codec=EncryptionCodec({"k1": KEY1}), allow_plaintext=True)
    assert migrating.decode_message(plain, app_id=HOST) == MESSAGES[0]
    # ... and still writes ciphertext.
    assert SECRET_BYTES not in migrating.encode_message(MESSAGES[0], app_id=HOST)
    assert (
        migrating.decode_message(ENC.encode_message(MESSAGES[0], app_id=HOST), app_id=HOST)
        == MESSAGES[0]
    )


@pytest.mark.parametrize("marker", [2, 0, "1", True, [1], b"\x01"])
def test_an_unknown_payload_scheme_is_refused(marker: object) -> None:
    fields = fields_of(ENC.encode_message(MESSAGES[0], app_id=HOST))
    fields[PAYLOAD_MARKER] = marker
    data = msgpack.packb([1, "StartWorkflow", fields], use_bin_type=True)
    with pytest.raises(DecodeError, match="scheme"):
        ENC.decode_message(data, app_id=HOST)


@pytest.mark.parametrize("value", [None, "plain", 7, [b"x"], {"a": 1}])
def test_a_protected_field_that_is_not_bin_is_refused(value: object) -> None:
    fields = fields_of(ENC.encode_message(MESSAGES[0], app_id=HOST))
    fields["input"] = value
    data = msgpack.packb([1, "StartWorkflow", fields], use_bin_type=True)
    with pytest.raises(DecodeError, match=r"field 'input' must be an encoded payload"):
        ENC.decode_message(data, app_id=HOST)


def test_a_missing_protected_field_takes_its_default() -> None:
    start = MESSAGES[0]
    assert isinstance(start, StartWorkflow)
    fields = fields_of(ENC.encode_message(start, app_id=HOST))
    del fields["input"]
    data = msgpack.packb([1, "StartWorkflow", fields], use_bin_type=True)
    assert ENC.decode_message(data, app_id=HOST) == dataclasses.replace(start, input=None)


# -- tampering, wrong keys, unknown keys ----------------------------------------------------------


def _with_field(data: bytes, kind: str, name: str, value: bytes) -> bytes:
    fields = fields_of(data)
    fields[name] = value
    return msgpack.packb([1, kind, fields], use_bin_type=True)


def test_every_single_bit_flip_in_a_ciphertext_is_detected() -> None:
    data = ENC.encode_message(RaiseEvent("i-1", "e", {"secret": SECRET}), app_id=HOST)
    sealed = fields_of(data)["data"]
    for index in range(len(sealed)):
        for bit in (0x01, 0x80):
            broken = bytearray(sealed)
            broken[index] ^= bit
            with pytest.raises(DecodeError):
                ENC.decode_message(
                    _with_field(data, "RaiseEvent", "data", bytes(broken)), app_id=HOST
                )


def test_truncated_or_extended_ciphertexts_are_refused() -> None:
    data = ENC.encode_message(RaiseEvent("i-1", "e", SECRET), app_id=HOST)
    sealed = fields_of(data)["data"]
    for cut in range(len(sealed)):
        with pytest.raises(DecodeError):
            ENC.decode_message(_with_field(data, "RaiseEvent", "data", sealed[:cut]), app_id=HOST)
    with pytest.raises(DecodeError, match="authentication"):
        ENC.decode_message(_with_field(data, "RaiseEvent", "data", sealed + b"\x00"), app_id=HOST)


def test_tampering_reports_a_clear_reason() -> None:
    data = ENC.encode_message(RaiseEvent("i-1", "e", SECRET), app_id=HOST)
    sealed = bytearray(fields_of(data)["data"])
    sealed[-1] ^= 1
    with pytest.raises(DecodeError, match=r"field 'data'.*failed authentication with key 'k1'"):
        ENC.decode_message(_with_field(data, "RaiseEvent", "data", bytes(sealed)), app_id=HOST)


def test_a_different_key_under_the_same_id_fails_authentication() -> None:
    data = ENC.encode_message(MESSAGES[0], app_id=HOST)
    other = codec_with({"k1": random_key()})
    with pytest.raises(DecodeError, match="failed authentication"):
        other.decode_message(data, app_id=HOST)


def test_an_unknown_key_id_is_named_in_the_error() -> None:
    data = codec_with({"k9": KEY1}).encode_message(MESSAGES[0], app_id=HOST)
    with pytest.raises(DecodeError, match=r"unknown key id 'k9'.*'k1'"):
        ENC.decode_message(data, app_id=HOST)


def test_swapping_the_key_id_in_the_header_fails_authentication() -> None:
    # Same key under two ids: the id is associated data, so relabelling is detected.
    both = codec_with({"ka": KEY1, "kb": KEY1})
    sealed = EncryptionCodec({"ka": KEY1}).seal(b"\xa3abc", HERE)
    relabelled = sealed.replace(b"\x02ka", b"\x02kb", 1)
    with pytest.raises(DecodeError, match="failed authentication"):
        both.payload_codec.open(relabelled, HERE)  # type: ignore[union-attr]
    assert both.payload_codec.open(sealed, HERE) == b"\xa3abc"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"fmenc",
        b"fmenc2",
        b"fmenc2\x05k1",
        b"fmenc2\x02k1" + bytes(40),
        b"fmenc1\x05k1",
        b"fmenc1\x02k1" + bytes(40),
        b"fmenc3\x02k1" + bytes(40),
        b"xxxxxx" + bytes(40),
    ],
)
@pytest.mark.parametrize("allow_unbound", [False, True])
def test_malformed_ciphertexts_are_decode_errors(blob: bytes, allow_unbound: bool) -> None:
    with pytest.raises(DecodeError):
        EncryptionCodec({"k1": KEY1}, allow_unbound=allow_unbound).open(blob, HERE)


@pytest.mark.parametrize("magic", [b"fmenc2", b"fmenc1"])
def test_a_non_ascii_key_id_in_a_ciphertext_is_refused(magic: bytes) -> None:
    blob = magic + b"\x02\xff\xfe" + bytes(40)
    with pytest.raises(DecodeError, match="malformed key id"):
        EncryptionCodec({"k1": KEY1}, allow_unbound=True).open(blob, HERE)


# -- rotation -------------------------------------------------------------------------------------


def test_rotation_old_data_still_decrypts_and_new_data_uses_the_new_key() -> None:
    before = codec_with({"k1": KEY1})
    old_message = before.encode_message(MESSAGES[0], app_id=HOST)
    old_event = before.encode_event(EVENTS[0], **AT)
    old_state = before.encode_state(STATE, **AT)

    after = codec_with({"k2": KEY2, "k1": KEY1})  # k2 first: active
    assert after.payload_codec.active_key_id == "k2"  # type: ignore[union-attr]
    assert after.decode_message(old_message, app_id=HOST) == MESSAGES[0]
    assert after.decode_event(old_event, **AT) == EVENTS[0]
    assert after.decode_state(old_state, **AT) == STATE

    new_message = after.encode_message(MESSAGES[0], app_id=HOST)
    assert fields_of(new_message)["input"].startswith(MAGIC + b"\x02k2")
    # Readers that already have k2 read new data; k1 can be retired once old data is gone.
    assert codec_with({"k2": KEY2}).decode_message(new_message, app_id=HOST) == MESSAGES[0]
    with pytest.raises(DecodeError, match="unknown key id 'k2'"):
        before.decode_message(new_message, app_id=HOST)
    with pytest.raises(DecodeError, match="unknown key id 'k1'"):
        codec_with({"k2": KEY2}).decode_message(old_message, app_id=HOST)


def test_a_designated_active_key_encrypts() -> None:
    codec = codec_with({"k1": KEY1, "k2": KEY2}, active="k2")
    assert fields_of(codec.encode_message(MESSAGES[0], app_id=HOST))["input"].startswith(
        MAGIC + b"\x02k2"
    )
    # Stage 1 of a rotation: every reader gets k2 while k1 stays active.
    staged = codec_with({"k1": KEY1, "k2": KEY2})
    assert (
        staged.decode_message(codec.encode_message(MESSAGES[0], app_id=HOST), app_id=HOST)
        == MESSAGES[0]
    )


# -- EncryptionCodec configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "active", "match"),
    [
        ({}, None, "at least one key"),
        ({"k1": b"short"}, None, "32 bytes"),
        ({"k1": bytes(33)}, None, "32 bytes"),
        ({"k1": "a" * 32}, None, "32 bytes"),
        ({"": KEY1}, None, "key id"),
        ({"bad id": KEY1}, None, "key id"),
        ({"k" * 65: KEY1}, None, "key id"),
        ({"k1": KEY1}, "k2", "not in the keyring"),
    ],
)
def test_encryption_codec_refuses_bad_keyrings(
    keys: dict[str, Any], active: str | None, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        EncryptionCodec(keys, active=active)


def test_encryption_codec_repr_shows_key_ids_but_no_key_material() -> None:
    codec = EncryptionCodec({"k2": KEY2, "k1": KEY1})
    text = repr(codec)
    assert "k2" in text and "k1" in text
    for key in (KEY1, KEY2):
        assert repr(key) not in text and b64(key) not in text and key.hex() not in text
    assert codec.key_ids == ("k2", "k1")


def test_encryption_codec_is_a_bound_payload_codec_and_codec_refuses_other_objects() -> None:
    assert isinstance(EncryptionCodec({"k1": KEY1}), BoundPayloadCodec)
    # It has no unbound encode/decode: nothing can encrypt a value for no place in particular.
    assert not isinstance(EncryptionCodec({"k1": KEY1}), PayloadCodec)
    with pytest.raises(ConfigurationError, match=r"seal.*encode"):
        Codec(payload_codec=object())  # type: ignore[arg-type]


class _Exploding:
    """A third-party payload codec that fails in unexpected ways."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def encode(self, data: bytes) -> bytes:
        return b"~" + data

    def decode(self, data: bytes) -> bytes:
        raise self.error


@pytest.mark.parametrize("error", [ValueError("x"), KeyError(1), RuntimeError(), MemoryError()])
def test_any_failure_of_a_payload_codec_on_decode_is_a_decode_error(error: Exception) -> None:
    codec = Codec(payload_codec=_Exploding(error))
    with pytest.raises(DecodeError, match="payload codec _Exploding failed"):
        codec.decode_message(codec.encode_message(MESSAGES[0], app_id=HOST), app_id=HOST)


def test_a_payload_codec_failing_on_encode_is_a_serialization_error() -> None:
    class Broken:
        def encode(self, data: bytes) -> bytes:
            raise RuntimeError("hsm offline")

        def decode(self, data: bytes) -> bytes:
            return data

    with pytest.raises(SerializationError, match="hsm offline"):
        Codec(payload_codec=Broken()).encode_message(MESSAGES[0], app_id=HOST)


def test_a_custom_payload_codec_is_applied_to_every_protected_field() -> None:
    class Reverse:
        def encode(self, data: bytes) -> bytes:
            return data[::-1]

        def decode(self, data: bytes) -> bytes:
            return data[::-1]

    codec = Codec(payload_codec=Reverse())
    for obj in MESSAGES:
        data = codec.encode_message(obj, app_id=HOST)
        assert codec.decode_message(data, app_id=HOST) == obj
        assert SECRET_BYTES not in data


# -- values are bound to their app, instance and field (issue 15) -------------------------------


def _moved(source: bytes, source_field: str, target: bytes, target_field: str) -> bytes:
    """``target`` with its ``target_field`` replaced by the ciphertext of ``source_field`` of
    ``source``: what someone who can write to a queue or to Redis can do without the key."""
    sealed = fields_of(source)[source_field]
    assert isinstance(sealed, bytes) and sealed.startswith(MAGIC)
    envelope = msgpack.unpackb(target, raw=False, strict_map_key=False)
    envelope[2][target_field] = sealed
    return msgpack.packb(envelope, use_bin_type=True)


def test_a_value_moved_into_another_instances_message_is_refused() -> None:
    """A start's input replayed into a start of another instance of the same workflow and
    app, and an activity input into another instance's task, fail authentication."""
    start = ENC.encode_message(StartWorkflow("i-1", "wf", "orders", {"card": SECRET}))
    other = ENC.encode_message(StartWorkflow("i-2", "wf", "orders", {"card": "mine"}))
    with pytest.raises(DecodeError, match=r"failed authentication.*instance 'i-2'"):
        ENC.decode_message(_moved(start, "input", other, "input"))
    task = ENC.encode_message(ActivityTask("i-1", "orders", "pay", 3, 1, "charge", SECRET))
    other_task = ENC.encode_message(ActivityTask("i-2", "orders", "pay", 3, 1, "charge", 0))
    with pytest.raises(DecodeError, match="failed authentication"):
        ENC.decode_message(_moved(task, "input", other_task, "input"))
    untouched = ENC.decode_message(other)  # the untouched one decodes
    assert isinstance(untouched, StartWorkflow) and untouched.input == {"card": "mine"}


def test_a_value_moved_into_another_apps_message_is_refused() -> None:
    """The same instance ID on another app is another workflow: a value moved there fails."""
    start = ENC.encode_message(StartWorkflow("i-1", "wf", "orders", {"card": SECRET}))
    elsewhere = ENC.encode_message(StartWorkflow("i-1", "wf", "billing", None))
    with pytest.raises(DecodeError, match=r"failed authentication.*on app 'billing'"):
        ENC.decode_message(_moved(start, "input", elsewhere, "input"))
    task = ENC.encode_message(ActivityTask("i-1", "orders", "pay", 3, 1, "charge", SECRET))
    other_host = ENC.encode_message(ActivityTask("i-1", "billing", "pay", 3, 1, "charge", 0))
    with pytest.raises(DecodeError, match="failed authentication"):
        ENC.decode_message(_moved(task, "input", other_host, "input"))


def test_a_value_moved_into_another_field_is_refused() -> None:
    """Same app and instance, other field: a workflow input replayed as an activity input,
    a failure message as its stack trace, a state's input as its output."""
    start = ENC.encode_message(StartWorkflow("i-1", "wf", "orders", {"card": SECRET}))
    task = ENC.encode_message(ActivityTask("i-1", "orders", "pay", 3, 1, "charge", 0))
    with pytest.raises(DecodeError, match=r"another place than 'ActivityTask\.input'"):
        ENC.decode_message(_moved(start, "input", task, "input"))

    result = ENC.encode_message(ActivityResult("i-1", 3, 1, failure=FAILURE), app_id="orders")
    envelope = msgpack.unpackb(result, raw=False, strict_map_key=False)
    failure = envelope[2]["failure"]
    failure["stack_trace"] = failure["message"]
    swapped = msgpack.packb(envelope, use_bin_type=True)
    with pytest.raises(DecodeError, match=r"field 'failure\.stack_trace'.*failed auth"):
        ENC.decode_message(swapped, app_id="orders")

    state = ENC.encode_state(STATE, **AT)
    with pytest.raises(DecodeError, match="failed authentication"):
        ENC.decode_state(_moved(state, "input", state, "output"), **AT)


def test_a_reply_is_bound_to_the_app_whose_reply_queue_carries_it() -> None:
    """Results and events do not name their workflow's app; they are bound to the app they are
    sent to, so one replayed onto another app's reply queue (same instance ID) is refused."""
    for message in (
        ActivityResult("i-1", 3, 1, output=SECRET),
        ChildResult("i-1", 5, "i-1-child", output=SECRET),
        RaiseEvent("i-1", "approve", SECRET, "ev-1"),
    ):
        data = ENC.encode_message(message, app_id="orders")
        assert ENC.decode_message(data, app_id="orders") == message
        with pytest.raises(DecodeError, match=r"failed authentication.*on app 'billing'"):
            ENC.decode_message(data, app_id="billing")


def test_history_events_and_states_are_bound_to_the_history_that_holds_them() -> None:
    """An event or state copied to another instance's keys, or another app's, is refused."""
    event = ENC.encode_event(ActivityCompleted(3, {"receipt": SECRET}), **AT)
    state = ENC.encode_state(STATE, **AT)
    for app_id, instance_id in (("orders", "order-99"), ("billing", "order-17")):
        with pytest.raises(DecodeError, match="failed authentication"):
            ENC.decode_event(event, app_id=app_id, instance_id=instance_id)
        with pytest.raises(DecodeError, match="failed authentication"):
            ENC.decode_state(state, app_id=app_id, instance_id=instance_id)
    assert ENC.decode_event(event, **AT) == ActivityCompleted(3, {"receipt": SECRET})
    # The kind is part of the field: an activity's output replayed as a child's output fails.
    child = ENC.encode_event(ChildWorkflowCompleted(3, None), **AT)
    with pytest.raises(DecodeError, match=r"ChildWorkflowCompleted\.output"):
        ENC.decode_event(_moved(event, "output", child, "output"), **AT)


def test_a_value_from_a_message_moved_into_a_history_is_refused() -> None:
    """An activity task's input (seen on the queue) does not decode as the history's
    ActivityScheduled input of the same instance."""
    task = ENC.encode_message(ActivityTask("order-17", "orders", "pay", 3, 1, "charge", SECRET))
    scheduled = ENC.encode_event(ActivityScheduled(3, "charge", "pay", None), **AT)
    with pytest.raises(DecodeError, match="failed authentication"):
        ENC.decode_event(_moved(task, "input", scheduled, "input"), **AT)


def test_the_parts_of_a_context_a_blob_does_not_name_must_be_given() -> None:
    """Encoding without them is a programming error; decoding without them is refused."""
    result = ActivityResult("i-1", 3, 1, output=SECRET)
    with pytest.raises(TypeError, match="app_id="):
        ENC.encode_message(result)
    with pytest.raises(TypeError, match="app_id= and instance_id="):
        ENC.encode_event(ActivityCompleted(3, SECRET))
    with pytest.raises(TypeError, match="instance_id="):
        ENC.encode_state(STATE, app_id="orders")
    data = ENC.encode_message(result, app_id="orders")
    with pytest.raises(DecodeError, match="did not say which app_id="):
        ENC.decode_message(data)
    with pytest.raises(DecodeError, match="did not say"):
        ENC.decode_event(ENC.encode_event(ActivityCompleted(3, 1), **AT))
    # Kinds without protected fields, codecs without a payload codec and context-free payload
    # codecs (compression) need nothing.
    assert ENC.decode_message(ENC.encode_message(TimerDue("i-1", 2))) == TimerDue("i-1", 2)
    assert Codec().decode_message(Codec().encode_message(result)) == result
    free = Codec(payload_codec=_Exploding(ValueError()))
    assert b"~" in free.encode_message(result)
    assert b"~" in free.encode_event(ActivityCompleted(3, SECRET))


class _Recording:
    """A bound payload codec that records the context of every value it seals."""

    def __init__(self) -> None:
        self.seen: list[PayloadContext] = []

    def seal(self, data: bytes, context: PayloadContext) -> bytes:
        self.seen.append(context)
        return data

    def open(self, data: bytes, context: PayloadContext) -> bytes:
        return data


def test_each_kind_binds_its_values_to_the_documented_context() -> None:
    """The rule of docs/security-payloads.md: the workflow's hosting app (from the envelope
    where it names it, else the caller's), the instance, and kind.field."""
    recording = _Recording()
    codec = Codec(payload_codec=recording)

    def contexts(encode: Any) -> set[tuple[str, str, str]]:
        recording.seen.clear()
        encode()
        return {(c.app_id, c.instance_id, c.field) for c in recording.seen}

    assert contexts(lambda: codec.encode_message(MESSAGES[0], app_id="ignored")) == {
        ("orders", "order-17", "StartWorkflow.input")
    }
    assert contexts(lambda: codec.encode_message(MESSAGES[2])) == {
        ("orders", "order-17", "ActivityTask.input")  # host_app_id, not the activity's app
    }
    assert contexts(lambda: codec.encode_message(MESSAGES[8], app_id="parents")) == {
        ("parents", "order-17", "ChildResult.output"),
        ("parents", "order-17", "ChildResult.failure.message"),
        ("parents", "order-17", "ChildResult.failure.stack_trace"),
    }
    reply = contexts(lambda: codec.encode_message(StateReply("order-17", STATE)))
    assert ("orders", "order-17", "StateReply.state.custom_status") in reply
    assert contexts(lambda: codec.encode_event(EVENTS[0], app_id="a", instance_id="i")) == {
        ("a", "i", "WorkflowStarted.input")
    }
    assert ("a", "i", "WorkflowState.failure.message") in contexts(
        lambda: codec.encode_state(STATE, app_id="a", instance_id="i")
    )


def test_payload_context_bytes_are_unambiguous() -> None:
    """Length prefixes keep ('ab', 'c') and ('a', 'bc') apart."""
    one = PayloadContext("ab", "c", "StartWorkflow.input").as_bytes()
    two = PayloadContext("a", "bc", "StartWorkflow.input").as_bytes()
    assert one != two
    assert PayloadContext("\udcff", "i", "f").as_bytes()  # a lone surrogate does not raise


def _fmenc1(key_id: str, key: bytes, plaintext: bytes) -> bytes:
    """A value as flowmesh wrote it before binding: associated data = header only."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = MAGIC_UNBOUND + bytes([len(key_id)]) + key_id.encode()
    nonce = os.urandom(12)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header)


def test_unbound_fmenc1_values_are_refused_unless_allowed_for_migration() -> None:
    """Format 1 values carry no context, so they could be replayed anywhere: refused by
    default, read with allow_unbound (FLOWMESH_PAYLOAD_ALLOW_UNBOUND=1); writes are fmenc2."""
    old = _fmenc1("k1", KEY1, msgpack.packb({"card": SECRET}))
    fields = {**fields_of(ENC.encode_message(MESSAGES[0])), "input": old}
    blob = msgpack.packb([1, "StartWorkflow", fields], use_bin_type=True)
    with pytest.raises(DecodeError, match=r"fmenc1.*FLOWMESH_PAYLOAD_ALLOW_UNBOUND"):
        ENC.decode_message(blob)
    migrating = codec_with({"k1": KEY1}, allow_unbound=True)
    migrated = migrating.decode_message(blob)
    assert isinstance(migrated, StartWorkflow) and migrated.input == {"card": SECRET}
    assert fields_of(migrating.encode_message(MESSAGES[0]))["input"].startswith(b"fmenc2")
    env = {"FLOWMESH_PAYLOAD_KEYS": f"k1:{b64(KEY1)}"}
    assert not build_codec(env).payload_codec.allow_unbound  # type: ignore[union-attr]
    lenient = build_codec({**env, "FLOWMESH_PAYLOAD_ALLOW_UNBOUND": "1"})
    read = lenient.decode_message(blob)
    assert isinstance(read, StartWorkflow) and read.input == {"card": SECRET}
    with pytest.raises(ConfigurationError, match="ALLOW_UNBOUND"):
        build_codec({**env, "FLOWMESH_PAYLOAD_ALLOW_UNBOUND": "maybe"})


# -- keys from the environment ---------------------------------------------------------------------


def test_payload_keys_parse_in_order_with_the_first_active() -> None:
    text = f" k2 : {b64(KEY2)} , k1:{b64(KEY1)} "
    keys = parse_payload_keys(text)
    assert list(keys) == ["k2", "k1"] and keys == {"k2": KEY2, "k1": KEY1}
    codec = payload_codec_from_env({"FLOWMESH_PAYLOAD_KEYS": text})
    assert codec is not None and codec.active_key_id == "k2"


def test_payload_keys_accept_url_safe_and_unpadded_base64() -> None:
    key = bytes([0xFB, 0xFF] * 16)
    urlsafe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert parse_payload_keys(f"k:{urlsafe}") == {"k": key}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("  ", "empty"),
        (f"k1:{b64(KEY1)},", "item 2 is empty"),
        (b64(KEY1), "no ':'"),
        (f"k1:{b64(KEY1)},k1:{b64(KEY2)}", "appears twice"),
        ("k1:", "no value"),
        ("k1:not*base64!", "not valid base64"),
        (f"k1:{b64(KEY1[:16])}", "16 bytes"),
        (f"k1:{b64(KEY1 + b'x')}", "33 bytes"),
        (f"bad id:{b64(KEY1)}", "key id"),
    ],
)
def test_bad_payload_keys_are_configuration_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        parse_payload_keys(text)
    assert "FLOWMESH_PAYLOAD_KEYS" in str(info.value)


def test_key_errors_never_show_key_material() -> None:
    secret_key = base64.b64encode(b"TOPSECRET-KEY-MATERIAL-0123456789ab").decode()
    for text in (f"k1:{secret_key}", f"k1:{secret_key}!!", f"k1:{secret_key},k1:{secret_key}"):
        with pytest.raises(ConfigurationError) as info:
            parse_payload_keys(text)
        assert secret_key not in str(info.value) and secret_key[:12] not in str(info.value)


def test_unset_keys_mean_no_encryption_but_set_and_empty_is_an_error() -> None:
    assert payload_codec_from_env({}) is None
    assert build_codec({}).payload_codec is None
    with pytest.raises(ConfigurationError, match="empty"):
        payload_codec_from_env({"FLOWMESH_PAYLOAD_KEYS": ""})


def test_cli_codec_is_built_from_the_environment() -> None:
    env = {"FLOWMESH_PAYLOAD_KEYS": f"k2:{b64(KEY2)},k1:{b64(KEY1)}"}
    codec = build_codec(env)
    assert isinstance(codec.payload_codec, EncryptionCodec)
    assert codec.payload_codec.active_key_id == "k2"
    plain = Codec().encode_message(MESSAGES[0], app_id=HOST)
    with pytest.raises(DecodeError):
        codec.decode_message(plain, app_id=HOST)
    lenient = build_codec({**env, "FLOWMESH_PAYLOAD_ALLOW_PLAINTEXT": "1"})
    assert lenient.decode_message(plain, app_id=HOST) == MESSAGES[0]
    with pytest.raises(ConfigurationError, match="ALLOW_PLAINTEXT"):
        build_codec({**env, "FLOWMESH_PAYLOAD_ALLOW_PLAINTEXT": "maybe"})


# -- embedded backend ------------------------------------------------------------------------------

emb_host = App("emb-host")
emb_act = App("emb-act")


@emb_host.workflow
async def emb_guarded(ctx: WorkflowContext, payload: dict[str, Any]) -> dict[str, Any]:
    secret = payload["secret"]
    ctx.set_custom_status({"holding": secret})
    echoed = await ctx.call_activity("emb_echo", {"secret": secret}, app_id="emb-act")
    try:
        await ctx.call_activity(
            "emb_refuse", secret, app_id="emb-act", retry=RetryPolicy(max_attempts=1)
        )
        failure = ""
    except ActivityFailedError as exc:
        failure = exc.failure.message
    approval = await ctx.wait_for_external_event("approve")
    return {"echoed": echoed, "approval": approval, "failure": failure}


@emb_act.activity
def emb_echo(ctx: ActivityContext, value: object) -> object:
    return {"echo": value}


@emb_act.activity
def emb_refuse(ctx: ActivityContext, secret: str) -> None:
    raise ValueError(f"refusing to handle {secret}")


def expected_result(secret: str) -> dict[str, Any]:
    return {
        "echoed": {"echo": {"secret": secret}},
        "approval": {"ok": secret},
        "failure": f"refusing to handle {secret}",
    }


async def test_embedded_backend_carries_only_ciphertext_and_dead_letters_unknown_keys() -> None:
    codec = codec_with({"k2": KEY2, "k1": KEY1})
    env = TestEnvironment([emb_host, emb_act], codec=codec)
    bodies: list[bytes] = []
    publish, send_reply = env.transport.publish, env.transport.send_reply

    async def recording_publish(messages: Any) -> None:
        bodies.extend(bytes(m.body) for m in messages)
        await publish(messages)

    async def recording_reply(
        address: str, correlation_id: str, body: bytes, *, answer_by: float = 0.0
    ) -> None:
        bodies.append(bytes(body))
        await send_reply(address, correlation_id, body, answer_by=answer_by)

    env.transport.publish = recording_publish  # type: ignore[method-assign]
    env.transport.send_reply = recording_reply  # type: ignore[method-assign]
    async with env:
        handle = await env.client.start_workflow(
            "emb_guarded", {"secret": SECRET}, app_id="emb-host", instance_id="emb-1"
        )
        for _ in range(200):
            state = await handle.describe()
            if state.waiting_on and state.waiting_on[0].kind == "event":
                break
            await asyncio.sleep(0.01)
        assert state.custom_status == {"holding": SECRET}  # the client decrypts
        await handle.raise_event("approve", {"ok": SECRET})
        assert await handle.result(timeout=10) == expected_result(SECRET)

        # Someone else's ciphertext (unknown key id) is dead-lettered, and work goes on.
        alien = codec_with({"k9": random_key()}).encode_message(
            RaiseEvent("emb-1", "approve", SECRET), app_id="emb-host"
        )
        await env.transport.publish([Outgoing("emb-host", QueueKind.REPLY, alien)])
        task = codec_with({"k9": random_key()}).encode_message(
            ActivityTask("emb-2", "emb-host", "emb-act", 0, 1, "emb_echo", SECRET), app_id=HOST
        )
        await env.transport.publish([Outgoing("emb-act", QueueKind.WORK, task)])
        for _ in range(200):
            if env.transport.dead_letters("emb-host") and env.transport.dead_letters("emb-act"):
                break
            await asyncio.sleep(0.01)
        [(_, host_reason)] = env.transport.dead_letters("emb-host")
        [(_, act_reason)] = env.transport.dead_letters("emb-act")
        assert "unknown key id 'k9'" in host_reason and "unknown key id 'k9'" in act_reason
        second = await env.client.start_workflow(
            "emb_guarded", {"secret": "other"}, app_id="emb-host", instance_id="emb-3"
        )
        await asyncio.sleep(0.05)
        await second.raise_event("approve", {"ok": "other"})
        assert await second.result(timeout=10) == expected_result("other")

    mine = [b for b in bodies if b not in (alien, task)]
    assert len(mine) >= 10
    assert not [b for b in mine if SECRET_BYTES in b]
    assert sum(MAGIC in b for b in mine) >= 8


# -- real RabbitMQ and Redis ----------------------------------------------------------------------

APPS = "tests.security.apps"
E2E_SECRET = "e2e-Sekrit-Narwhal-40913"


@pytest.fixture
def payload_env() -> dict[str, str]:
    return {"FLOWMESH_PAYLOAD_KEYS": f"k2:{b64(KEY2)},k1:{b64(KEY1)}"}


def redis_dump(url: str, prefix: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, raw content) of every key under ``prefix``, whatever its type."""
    client = redis.Redis.from_url(url)
    try:
        # redis-py types the sync client's replies as ``Awaitable[...] | ...`` (one signature
        # for both clients): each isinstance below narrows to what this client returns.
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            type_name = client.type(key)
            assert isinstance(type_name, bytes)
            kind = type_name.decode()
            parts: list[bytes]
            if kind == "string":
                value = client.get(key)
                assert value is None or isinstance(value, bytes)
                parts = [value or b""]
            elif kind == "hash":
                mapping = client.hgetall(key)
                assert isinstance(mapping, dict)
                parts = [b for kv in mapping.items() for b in kv]
            elif kind == "list":
                items = client.lrange(key, 0, -1)
                assert isinstance(items, list)
                parts = list(items)
            elif kind == "set":
                members = client.smembers(key)
                assert isinstance(members, set)
                parts = list(members)
            elif kind == "zset":
                scored = client.zrange(key, 0, -1, withscores=True)
                assert isinstance(scored, list)
                parts = [m for m, _ in scored]
            else:
                dumped = client.dump(key)
                assert dumped is None or isinstance(dumped, bytes)
                parts = [dumped or b""]
            yield key, b"\x00".join(parts)
    finally:
        client.close()


async def peek(
    amqp_url: str, queue: str, *, must: str, codec: Codec, timeout: float = 20.0
) -> list[bytes]:
    """Bodies of the messages waiting in ``queue``, left in place (got, then requeued).

    Waits until one of them decodes to a message carrying ``must`` (the one the test made):
    earlier tests may have left others there.
    """
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        source = await channel.get_queue(queue, ensure=True)
        deadline = time.monotonic() + timeout
        while True:
            bodies: list[bytes] = []
            held = []
            while (message := await source.get(no_ack=False, fail=False)) is not None:
                bodies.append(bytes(message.body))
                held.append(message)
            for message in held:
                await message.reject(requeue=True)
            app = queue.split(".")[1]  # fm.<app>.work|reply
            if any(must in repr(_decoded(codec, body, app)) for body in bodies):
                return bodies
            assert time.monotonic() < deadline, f"nothing carrying the secret in {queue}"
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


def _decoded(codec: Codec, body: bytes, app: str) -> object:
    try:
        return codec.decode_message(body, app_id=app)
    except DecodeError:
        return None


async def wait_waiting_for(handle: Any, kind: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        state = await handle.describe()
        if any(task.kind == kind for task in state.waiting_on):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"not waiting for {kind}: {state}")
        await asyncio.sleep(0.2)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowmesh.cli", *args],
        check=False,
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclasses.dataclass
class AtRest:
    """What the brokers and the store held while a secret-carrying workflow ran."""

    task_bodies: list[bytes]
    start_bodies: list[bytes]
    reply_bodies: list[bytes]
    redis: list[tuple[bytes, bytes]]
    logs: str


async def run_guarded_and_look_at_rest(
    workers: WorkerProcesses, services: Services, env: dict[str, str], secret: str, tag: str
) -> AtRest:
    """Run ``guarded`` to completion with ``secret``, then leave a task, a start and an event
    waiting in the queues (by stopping the apps) and collect those bodies and every Redis key
    under the session prefix."""
    codec = build_codec(env)
    env = {**env, "FLOWMESH_LOG_LEVEL": "debug"}
    host = workers.start("sec-host", module=APPS, env=env)
    act = workers.start("sec-act", module=APPS, env=env)
    for process in (host, act):
        workers.wait_ready(process)
    async with Client(services.amqp_url, codec=codec) as client:
        handle = await client.start_workflow(
            "guarded", {"secret": secret}, app_id="sec-host", instance_id=f"{tag}-1"
        )
        state = await wait_waiting_for(handle, "event")
        assert state.custom_status == {"holding": secret}
        await handle.raise_event("approve", {"ok": secret})
        assert await handle.result(timeout=30) == expected_result(secret)

        # Messages at rest: stop the activity app, so the next task waits in fm.sec-act.work;
        # stop the host, so a start and an event wait in its work and reply queues.
        _stop(act)
        await client.start_workflow(
            "guarded", {"secret": secret}, app_id="sec-host", instance_id=f"{tag}-2"
        )
        task_bodies = await peek(services.amqp_url, "fm.sec-act.work", must=secret, codec=codec)
        _stop(host)
        quiet = Client(services.amqp_url, codec=codec, options=ClientOptions(start_ack_timeout=0.2))
        async with quiet:
            await quiet.start_workflow(
                "guarded", {"secret": secret}, app_id="sec-host", instance_id=f"{tag}-3"
            )
            await quiet.get_workflow(f"{tag}-2", app_id="sec-host").raise_event(
                "approve", {"ok": secret}
            )
        start_bodies = await peek(services.amqp_url, "fm.sec-host.work", must=secret, codec=codec)
        reply_bodies = await peek(services.amqp_url, "fm.sec-host.reply", must=secret, codec=codec)
    return AtRest(
        task_bodies,
        start_bodies,
        reply_bodies,
        list(redis_dump(services.redis_url, services.key_prefix)),
        "\n".join(path.read_text(errors="replace") for *_, path in workers.processes),
    )


@pytest.mark.real_services
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_rabbitmq_and_redis_only_ever_hold_ciphertext_of_user_data(
    workers: WorkerProcesses, services: Services, payload_env: dict[str, str]
) -> None:
    """A workflow spreads a secret over input, custom status, activity input/output, an
    activity failure (message and stack), event data and its output, on real workers with
    FLOWMESH_PAYLOAD_KEYS. Every Redis key under the session prefix and the bodies waiting in
    the work and reply queues hold no plaintext of it; the keyed client and CLI read it back,
    the CLI without keys refuses."""
    secret = E2E_SECRET.encode()
    seen = await run_guarded_and_look_at_rest(workers, services, payload_env, E2E_SECRET, "sec")
    for name, found in (
        ("task", seen.task_bodies),
        ("start", seen.start_bodies),
        ("event", seen.reply_bodies),
    ):
        assert found, f"no {name} message waited in its queue"
        for body in found:
            assert secret not in body, f"plaintext secret in a {name} message"
            assert MAGIC in body, f"{name} message carries no ciphertext"
    mine = [(k, v) for k, v in seen.redis if b"{sec-host}" in k]
    assert len(mine) >= 4, [k for k, _ in seen.redis]
    leaking = [k for k, v in seen.redis if secret in v or secret in k]
    assert not leaking, f"plaintext secret in Redis keys {leaking}"
    assert sum(MAGIC in v for _, v in mine) >= 3
    # Worker logs (debug level) show error types, not messages or heartbeat details.
    assert "activity raised" in seen.logs and "heartbeat" in seen.logs
    assert E2E_SECRET not in seen.logs

    # The authorised CLI decrypts; one without the keys refuses instead of showing bytes.
    status = ["status", "sec-1", "--app-id", "sec-host", "--amqp-url", services.amqp_url]
    host = workers.start("sec-host", module=APPS, env=payload_env)
    workers.wait_ready(host)
    shown = run_cli(status, payload_env)
    assert shown.returncode == 0, shown.stderr
    assert E2E_SECRET in shown.stdout and "COMPLETED" in shown.stdout
    history = run_cli(
        [
            "history", "sec-1", "--app-id", "sec-host", "--amqp-url", services.amqp_url,
        ],
        payload_env,
    )  # fmt: skip
    assert history.returncode == 0, history.stderr
    assert "ActivityFailed" in history.stdout
    keyless = run_cli(status, {})
    assert keyless.returncode == 1 and "FLOWMESH_PAYLOAD_KEYS" in keyless.stderr
    assert E2E_SECRET not in keyless.stdout + keyless.stderr


@pytest.mark.real_services
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_control_without_keys_the_same_scan_finds_the_plaintext(
    workers: WorkerProcesses, services: Services
) -> None:
    """The scan above can fail: without FLOWMESH_PAYLOAD_KEYS it finds the secret in every
    queue it peeks at and in Redis."""
    secret = "plain-Visible-Axolotl-5521"
    seen = await run_guarded_and_look_at_rest(workers, services, {}, secret, "ctl")
    for found in (seen.task_bodies, seen.start_bodies, seen.reply_bodies):
        assert any(secret.encode() in body for body in found)
    assert any(secret.encode() in v for _, v in seen.redis)
    assert secret in seen.logs  # without encryption, logs show error messages as before


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=20)


@pytest.mark.real_services
@pytest.mark.timeout(120)
async def test_a_worker_dead_letters_ciphertext_it_has_no_key_for(
    workers: WorkerProcesses, services: Services, payload_env: dict[str, str]
) -> None:
    """A message encrypted with a key the worker does not have goes to the dead-letter queue
    with a structured log line naming the unknown key id, and the worker keeps serving."""
    from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

    act = workers.start("sec-act", module=APPS, env=payload_env)
    workers.wait_ready(act)
    alien = codec_with({"k9": random_key()}).encode_message(
        ActivityTask("alien-1", "sec-host", "sec-act", 0, 1, "echo", E2E_SECRET)
    )
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        before = (await transport.queue_stats("sec-act")).dead_messages
        await transport.publish([Outgoing("sec-act", QueueKind.WORK, alien, "alien:1")])
        deadline = time.monotonic() + 30
        while (await transport.queue_stats("sec-act")).dead_messages <= before:
            assert time.monotonic() < deadline, "not dead-lettered"
            await asyncio.sleep(0.2)
    assert act.poll() is None
    log = workers.processes[-1][2].read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    [dead] = [e for e in lines if e.get("message_id") == "alien:1"]
    assert dead["event"] == "message dead-lettered" and "unknown key id 'k9'" in dead["reason"]
    assert any(e.get("event") == "payload encryption enabled" for e in lines)
    assert E2E_SECRET not in log


@pytest.mark.real_services
@pytest.mark.timeout(120)
async def test_a_worker_dead_letters_a_value_moved_into_another_instance(
    workers: WorkerProcesses, services: Services, payload_env: dict[str, str]
) -> None:
    """A start whose encrypted input was lifted from another instance's start (same app,
    same key) is dead-lettered with the failed authentication as reason, so the value never
    reaches a workflow; the worker keeps serving and the instance ID is still free."""
    from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

    codec = build_codec(payload_env)
    host = workers.start("sec-host", module=APPS, env=payload_env)
    workers.wait_ready(host)
    original = codec.encode_message(
        StartWorkflow("moved-a", "guarded", "sec-host", {"secret": E2E_SECRET})
    )
    target = codec.encode_message(StartWorkflow("moved-b", "guarded", "sec-host", None))
    forged = _moved(original, "input", target, "input")
    async with RabbitMQTransport(RabbitMQConfig(url=services.amqp_url)) as transport:
        before = (await transport.queue_stats("sec-host")).dead_messages
        await transport.publish([Outgoing("sec-host", QueueKind.WORK, forged, "moved:1")])
        deadline = time.monotonic() + 30
        while (await transport.queue_stats("sec-host")).dead_messages <= before:
            assert time.monotonic() < deadline, "not dead-lettered"
            await asyncio.sleep(0.2)
    assert host.poll() is None
    log = workers.processes[-1][2].read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    [dead] = [e for e in lines if e.get("message_id") == "moved:1"]
    assert dead["event"] == "message dead-lettered"
    assert "failed authentication" in dead["reason"] and "'moved-b'" in dead["reason"]
    async with Client(services.amqp_url, codec=codec) as client:
        handle = await client.start_workflow(
            "guarded", {"secret": "own"}, app_id="sec-host", instance_id="moved-b"
        )
        assert (await handle.describe()).input == {"secret": "own"}
