"""Fuzzing the decoder and the message handlers (DESIGN invariant 6: bad input never stops a
consumer).

(a) The decoder, with and without the encryption codec: arbitrary bytes, byte-level mutations
    of valid blobs and structured mutations (valid envelopes whose fields hold values of the
    wrong type, huge ints, deep nesting, ext types, bin where str is expected, sealed junk in
    encrypted fields, ...) raise nothing but ``DecodeError``.
(b) The handlers, on the embedded backend: such bodies published onto every queue the runtime
    consumes end in the dead-letter queue, the consumers keep serving (a workflow started
    afterwards completes) and nothing in them is executed (pickle/eval payloads stay inert).
    Valid but hostile messages (unknown instances, sequence numbers at their bounds, invalid
    IDs and names) crash nothing, and those with invalid identifiers are dead-lettered, as is
    each message whose numbers are out of range (negative or huge seqs, NaN/inf leases).

Bounded: at most 200 examples per property, whole module well under 30 s.
"""

from __future__ import annotations

import asyncio
import functools
import math
import pickle
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from flowmesh import ActivityContext, App, WorkflowContext
from flowmesh._errors import DecodeError
from flowmesh.codec import PAYLOAD_MARKER, Codec, PayloadContext
from flowmesh.model import (
    HISTORY_EVENT_TYPES,
    MAX_LEASE_SECONDS,
    MAX_SEQ,
    MESSAGE_TYPES,
    ActivityLease,
    ActivityResult,
    ActivityTask,
    ChildResult,
    Control,
    ControlAction,
    Describe,
    Message,
    ParentRef,
    RaiseEvent,
    StartAck,
    StartWorkflow,
    StateReply,
    TaskNote,
    TimerDue,
    WorkflowState,
)
from flowmesh.security import EncryptionCodec, message_problem
from flowmesh.testing import TestEnvironment
from flowmesh.transport import Outgoing, QueueKind
from tests.security.samples import AT, EVENTS, HOST, KEY1, MESSAGES, STATE

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HANDLER_FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SEALER = EncryptionCodec({"k1": KEY1})
PLAIN = Codec()
ENC = Codec(payload_codec=SEALER)
CODECS = {"plain": PLAIN, "encrypted": ENC}

# -- apps served by the handler fuzz --------------------------------------------------------------

fz_host = App("fz-host")
fz_act = App("fz-act")


@fz_host.workflow
async def fz_flow(ctx: WorkflowContext, n: int) -> int:
    return await ctx.call_activity("fz_double", n, app_id="fz-act")


@fz_host.workflow
async def fz_wait(ctx: WorkflowContext, _: object) -> object:
    return await ctx.wait_for_external_event("go")


@fz_host.workflow
async def fz_echo(ctx: WorkflowContext, value: object) -> object:
    return await ctx.call_activity("fz_echo_value", value, app_id="fz-act")


@fz_act.activity
def fz_double(ctx: ActivityContext, n: int) -> int:
    return 2 * n


@fz_act.activity
def fz_echo_value(ctx: ActivityContext, value: object) -> object:
    return value


# Messages aimed at the fuzzed apps, so that mutations of them reach real code paths.
TARGETED: list[Message] = [
    StartWorkflow("fz-1", "fz_flow", "fz-host", 3, request_id="r-1"),
    StartWorkflow("fz-2", "fz_echo", "fz-host", {"x": [1, b"2"]}, ParentRef("p-1", "fz-host", 0)),
    ActivityTask("fz-1", "fz-host", "fz-act", 0, 1, "fz_double", 3),
    ActivityResult("fz-1", 0, 1, 6),
    ActivityLease("fz-1", 0, 1, 30.0, "w"),
    TaskNote("fz-1", 0, 1, "note"),
    ChildResult("fz-1", 0, "fz-1:0", 1),
    TimerDue("fz-1", 0),
    RaiseEvent("fz-1", "go", {"ok": True}, "e-1"),
    Control("fz-1", ControlAction.SUSPEND, "why"),
    Describe("fz-1"),
]

VALID: list[bytes] = [
    *(
        codec.encode_message(m, app_id=HOST)
        for codec in CODECS.values()
        for m in [*MESSAGES, *TARGETED]
    ),
    *(codec.encode_event(e, **AT) for codec in CODECS.values() for e in EVENTS),
    *(codec.encode_state(STATE, **AT) for codec in CODECS.values()),
]
TAGS = [cls.__name__ for cls in (*MESSAGE_TYPES, *HISTORY_EVENT_TYPES, WorkflowState)]
FAMILIES: dict[str, tuple[type, ...]] = {
    "message": MESSAGE_TYPES,
    "event": HISTORY_EVENT_TYPES,
    "state": (WorkflowState,),
}


def decode_every_way(data: bytes) -> list[object]:
    """Decode ``data`` as each family with each codec; only DecodeError may be raised."""
    decoded: list[object] = []
    for codec in CODECS.values():
        for family, decode in (
            ("message", functools.partial(codec.decode_message, app_id=HOST)),
            ("event", functools.partial(codec.decode_event, **AT)),
            ("state", functools.partial(codec.decode_state, **AT)),
        ):
            try:
                result = decode(data)
            except DecodeError as exc:
                assert str(exc)  # a reason, always
                continue
            assert isinstance(result, FAMILIES[family]), (family, result)
            decoded.append(result)
    return decoded


# -- strategies ------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
    | st.floats()  # nan and inf included
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from(TAGS)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
keys = (
    st.text(max_size=10)
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=5)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
)
junk = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def nested(depth: int, leaf: object = None) -> object:
    value: object = leaf
    for _ in range(depth):
        value = [value]
    return value


deep = st.integers(min_value=30, max_value=400).map(nested)
# Sealed for no field in particular: decrypts nowhere, so it tests the refusal path.
ANYWHERE = PayloadContext(HOST, "order-17", "Anything.value")
hostile_values = junk | deep | st.builds(lambda v: SEALER.seal(msgpack.packb(v), ANYWHERE), junk)
# Deep nesting packed by hand (msgpack's packer stops at 512 levels).
deep_packed = st.integers(min_value=30, max_value=3000).map(lambda d: b"\x91" * d + b"\xc0")
# Plaintexts for sealed_for: junk that an attacker holding the key could encrypt.
junk_plaintext = (st.binary(max_size=40) | deep_packed) | st.builds(
    lambda v: msgpack.packb(v, use_bin_type=True), junk
)
MESSAGE_TAGS = frozenset(cls.__name__ for cls in MESSAGE_TYPES)


def sealed_for(tree: Any, field: object, plaintext: bytes) -> bytes:
    """``plaintext`` sealed for ``field`` of the blob ``tree``, so that it decrypts there
    (as decode_every_way reads it): the attacker holds the key."""
    tag, fields = tree[1], tree[2]
    instance = AT["instance_id"]
    # A mutation may have made the tag anything (a list, say): only a message tag names it.
    if isinstance(tag, str) and tag in MESSAGE_TAGS and isinstance(fields.get("instance_id"), str):
        instance = fields["instance_id"]
    return SEALER.seal(plaintext, PayloadContext(HOST, instance, f"{tag}.{field}"))


def unpack_raw(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


def pack(obj: object) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None


def slots_of(tree: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) in a decoded msgpack tree, breadth first."""
    out: list[tuple[Any, Any]] = []
    queue = [tree]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            for key, value in node.items():
                out.append((node, key))
                queue.append(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                out.append((node, index))
                queue.append(value)
    return out


@st.composite
def structured_mutation(draw: st.DrawFn) -> bytes:
    """A valid blob with one to three structural changes."""
    tree = unpack_raw(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "add", "delete", "tag", "marker", "sealed"]))
        fields = tree[2] if isinstance(tree, list) and len(tree) == 3 else None
        if op == "replace" or fields is None or not isinstance(fields, dict):
            slots = slots_of(tree)
            if slots:
                container, key = draw(st.sampled_from(slots))
                container[key] = draw(hostile_values)
        elif op == "add":
            fields[draw(keys)] = draw(hostile_values)
        elif op == "delete" and fields:
            del fields[draw(st.sampled_from(sorted(fields, key=repr)))]
        elif op == "tag":
            tree[1] = draw(st.sampled_from(TAGS) | scalars)
        elif op == "marker":
            fields[PAYLOAD_MARKER] = draw(st.sampled_from([1, 1, 2]) | scalars)
        elif op == "sealed":
            candidates = [k for k, v in fields.items() if isinstance(v, bytes)] or list(fields)
            if candidates:
                field = draw(st.sampled_from(sorted(candidates, key=repr)))
                fields[field] = sealed_for(tree, field, draw(junk_plaintext))
    data = pack(tree)
    return data if data is not None else draw(st.sampled_from(VALID))


@st.composite
def byte_mutation(draw: st.DrawFn) -> bytes:
    """A valid blob with bytes flipped, inserted, deleted or cut off."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


envelope_noise = st.builds(
    lambda prefix, noise: prefix + noise,
    st.sampled_from([b"\x93\x01", b"\x93\x01\xaeActivityResult", b"\x93\x01\xadStartWorkflow\x86"]),
    st.binary(max_size=200),
)
any_body = st.binary(max_size=400) | envelope_noise | byte_mutation() | structured_mutation()


# -- (a) the decoder -------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_decode_error(data: bytes) -> None:
    decode_every_way(data)


@FUZZ
@given(data=envelope_noise)
def test_an_envelope_start_followed_by_noise_only_raises_decode_error(data: bytes) -> None:
    decode_every_way(data)


@FUZZ
@given(data=byte_mutation())
def test_byte_mutations_of_valid_blobs_only_raise_decode_error(data: bytes) -> None:
    decode_every_way(data)


@FUZZ
@given(data=structured_mutation())
def test_structured_mutations_of_valid_envelopes_only_raise_decode_error(data: bytes) -> None:
    decoded = decode_every_way(data)
    event("decodes" if decoded else "refused")  # shown with --hypothesis-show-statistics


@FUZZ
@given(
    message=st.sampled_from([m for m in MESSAGES if isinstance(m, ActivityTask | RaiseEvent)]),
    field_value=hostile_values,
    field=st.sampled_from(["instance_id", "name", "seq", "attempt", "app_id", "event_id"]),
)
def test_wrong_types_in_typed_fields_are_refused_by_both_codecs(
    message: ActivityTask | RaiseEvent, field_value: object, field: str
) -> None:
    for codec in CODECS.values():
        tree = unpack_raw(codec.encode_message(message, app_id=HOST))
        if field not in tree[2]:
            continue
        expected = type(tree[2][field])
        tree[2][field] = field_value
        data = pack(tree)
        if data is None:
            continue
        try:
            decoded = codec.decode_message(data, app_id=HOST)
        except DecodeError:
            continue
        # Accepted only when the value has the field's type (float fields also take ints).
        assert type(getattr(decoded, field)) is expected, (field, field_value)


@FUZZ
@given(plaintext=junk_plaintext, which=st.sampled_from(["input", "output", "data"]))
def test_decryptable_junk_in_encrypted_fields_only_raises_decode_error(
    plaintext: bytes, which: str
) -> None:
    """An attacker holding the key is still held to the codec's limits on what decrypts."""
    for message in MESSAGES:
        tree = unpack_raw(ENC.encode_message(message, app_id=HOST))
        if which in tree[2]:
            tree[2][which] = sealed_for(tree, which, plaintext)
            decode_every_way(pack(tree) or b"")


@FUZZ
@given(
    message=st.sampled_from([m for m in MESSAGES if isinstance(m, StartWorkflow | RaiseEvent)]),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_no_mutation_of_a_ciphertext_ever_decrypts(
    message: StartWorkflow | RaiseEvent, flips: list[tuple[int, int]]
) -> None:
    field = "input" if isinstance(message, StartWorkflow) else "data"
    tree = unpack_raw(ENC.encode_message(message, app_id=HOST))
    sealed = bytearray(tree[2][field])
    for at, mask in flips:
        sealed[at % len(sealed)] ^= mask
    if bytes(sealed) == tree[2][field]:
        return  # flips cancelled out
    tree[2][field] = bytes(sealed)
    with pytest.raises(DecodeError):
        ENC.decode_message(pack(tree) or b"", app_id=HOST)


# -- (b) the handlers ------------------------------------------------------------------------------

QUEUES = [("fz-host", QueueKind.WORK), ("fz-host", QueueKind.REPLY), ("fz-act", QueueKind.WORK)]


@dataclass
class Outcome:
    dead: dict[str, list[tuple[bytes, str]]]
    expected_dead: Counter[tuple[str, bytes]]
    logs: list[MutableMapping[str, Any]]


# A handler that raised (or left its delivery unsettled) is caught by the transport, which
# logs one of these and requeues: that is a crash the consumer survived by luck, not design.
CRASHES = {"transport.handler_failed", "transport.handler_left_unsettled"}


def must_dead_letter(codec: Codec, body: bytes, app_id: str) -> bool:
    """True if ``app_id``'s consumer with ``codec`` must dead-letter ``body`` (undecodable or
    invalid)."""
    try:
        message = codec.decode_message(body, app_id=app_id)
    except DecodeError:
        return True
    return message_problem(message) is not None


async def run_hostile(
    codec: Codec, bodies: list[tuple[int, bytes]], check: Callable[[TestEnvironment], Any]
) -> Outcome:
    """Publish ``bodies`` (queue index, body) onto the fuzzed apps' queues, wait for every one
    that must be dead-lettered to get there, then run ``check`` (e.g. a normal workflow)."""
    expected: Counter[tuple[str, bytes]] = Counter()
    with capture_logs() as logs:
        return await _run_hostile(codec, bodies, check, expected, logs)


async def _run_hostile(
    codec: Codec,
    bodies: list[tuple[int, bytes]],
    check: Callable[[TestEnvironment], Any],
    expected: Counter[tuple[str, bytes]],
    logs: list[MutableMapping[str, Any]],
) -> Outcome:
    async with TestEnvironment([fz_host, fz_act], codec=codec) as env:
        for index, (queue, body) in enumerate(bodies):
            app_id, kind = QUEUES[queue % len(QUEUES)]
            await env.transport.publish([Outgoing(app_id, kind, body, f"fuzz-{index}")])
            if must_dead_letter(codec, body, app_id):
                expected[(app_id, body)] += 1
        for _ in range(500):
            dead = Counter(
                (app_id, body)
                for app_id in ("fz-host", "fz-act")
                for body, _ in env.transport.dead_letters(app_id)
            )
            if not expected - dead:
                break
            await asyncio.sleep(0.01)
        await check(env)
        return Outcome(
            {app: env.transport.dead_letters(app) for app in ("fz-host", "fz-act")},
            expected,
            logs,
        )


async def normal_workflow_completes(env: TestEnvironment) -> None:
    handle = await env.client.start_workflow("fz_flow", 21, app_id="fz-host")
    assert await handle.result(timeout=10) == 42


def assert_dead_lettered(outcome: Outcome) -> None:
    dead = Counter((app, body) for app, items in outcome.dead.items() for body, _ in items)
    missing = outcome.expected_dead - dead
    assert not missing, f"{sum(missing.values())} undecodable/invalid bodies not dead-lettered"
    for items in outcome.dead.values():
        assert all(reason for _, reason in items)
    crashes = [entry for entry in outcome.logs if entry.get("event") in CRASHES]
    assert not crashes, crashes[:3]


@HANDLER_FUZZ
@given(
    codec_name=st.sampled_from(sorted(CODECS)),
    bodies=st.lists(st.tuples(st.integers(0, 2), any_body), min_size=1, max_size=10),
)
def test_hostile_bodies_on_every_consumed_queue_are_dead_lettered_and_consumers_survive(
    codec_name: str, bodies: list[tuple[int, bytes]]
) -> None:
    outcome = asyncio.run(run_hostile(CODECS[codec_name], bodies, normal_workflow_completes))
    assert_dead_lettered(outcome)


class _Touch:
    """Unpickling this creates a file: the proof that something was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("codec_name", sorted(CODECS))
def test_pickle_and_eval_payloads_stay_inert_data(tmp_path: Path, codec_name: str) -> None:
    codec = CODECS[codec_name]
    sentinel = tmp_path / "executed"
    pickles = [pickle.dumps(_Touch(sentinel), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL)]
    source = f"__import__('pathlib').Path({str(sentinel)!r}).touch()"
    start_fields = {"instance_id": "pk-1", "name": "fz_echo", "app_id": "fz-host"}
    bodies = [
        *pickles,
        *(pack([1, "StartWorkflow", {**start_fields, "input": p}]) or b"" for p in pickles),
        pack([1, "StartWorkflow", {**start_fields, "input": msgpack.ExtType(1, pickles[-1])}]),
        pack([1, "StartWorkflow", {**start_fields, "name": source}]),
        pack([1, source, {}]),
        pack([1, "StartWorkflow", {**start_fields, "instance_id": source}]),
    ]
    payloads: list[object] = [pickles[0], pickles[-1], source, {"code": source, "p": pickles[2]}]

    async def check(env: TestEnvironment) -> None:
        for index, value in enumerate(payloads):
            handle = await env.client.start_workflow(
                "fz_echo", value, app_id="fz-host", instance_id=f"inert-{index}"
            )
            assert await handle.result(timeout=10) == value  # carried as plain data
        await normal_workflow_completes(env)

    outcome = asyncio.run(
        run_hostile(codec, [(i, b) for i, b in enumerate(bodies) if b is not None], check)
    )
    assert_dead_lettered(outcome)
    assert not sentinel.exists(), "a payload was executed"


# -- valid but hostile messages --------------------------------------------------------------------

INVALID_IDS: dict[str, list[Message]] = {
    "reply": [
        ActivityResult("*", 0, 1),
        Control("bad id!", ControlAction.TERMINATE),
        TimerDue("a" * 500, 1),
        RaiseEvent("{evil}", "go", 1),
        ChildResult("waiter", 1, "bad id!"),
        Describe(""),
    ],
    "work": [
        StartWorkflow("bad id!", "fz_flow", "fz-host", 1),
        StartWorkflow("ok-1", "bad name!", "fz-host", 1),
        StartWorkflow("ok-2", "fz_flow", "BAD_APP", 1),
        StartWorkflow("ok-3", "fz_flow", "fz-host", 1, ParentRef("*", "fz-host", 0)),
        StartWorkflow("ok-5", "fz_flow", "fz-host", 1, ParentRef("p-1", "Bad App", 0)),
        StartWorkflow("x" * 201, "fz_flow", "fz-host", 1),
    ],
    "act": [
        ActivityTask("waiter", "BAD!", "fz-act", 0, 1, "fz_double", 1),
        ActivityTask("waiter", "fz-host", "fz-act", 0, 1, "bad name!", 1),
        ActivityTask("waiter", "fz-host", "", 0, 1, "fz_double", 1),
        ActivityTask("../../x", "fz-host", "fz-act", 0, 1, "fz_double", 1),
    ],
}

VALID_BUT_HOSTILE: dict[str, list[Message]] = {
    "reply": [
        ActivityResult("nobody", 0, 1, "x"),
        ActivityResult("waiter", MAX_SEQ, 1, "x"),
        ActivityResult("waiter", 0, MAX_SEQ, "x"),
        *(Control("nobody", action) for action in ControlAction),
        TimerDue("nobody", MAX_SEQ),
        TimerDue("waiter", MAX_SEQ),
        TimerDue("waiter", -MAX_SEQ - 1),
        ChildResult("waiter", 99, "ghost-child", 1),
        RaiseEvent("nobody", "go", 1),
        RaiseEvent("waiter", "", 1),
        RaiseEvent("waiter", "not-go", "x" * 100_000),
        ActivityLease("waiter", 0, 1, MAX_LEASE_SECONDS),
        TaskNote("waiter", 0, 1, "x" * 100_000),
        Describe("nobody"),
        Describe("waiter", wait=True),
        StartAck("waiter", True),
        StateReply("waiter", None, "x"),
    ],
    "work": [
        StartWorkflow("waiter", "fz_wait", "fz-host", "duplicate start"),
        StartWorkflow("ok-4", "fz_flow", "other-app", 4),
        RaiseEvent("waiter", "go", "wrong queue"),
    ],
    "act": [
        ActivityTask("waiter", "fz-host", "fz-act", MAX_SEQ, MAX_SEQ, "fz_double", 1),
    ],
}

# Messages whose numbers are out of range for their meaning (issue 15): the model refuses to
# build them, so each is a valid message with fields replaced on the wire. A consumer must
# refuse them when decoding and dead-letter each alone.
_RESULT = ActivityResult("waiter", 0, 1, "x")
_LEASE = ActivityLease("waiter", 0, 1, 30.0)
_TASK = ActivityTask("waiter", "fz-host", "fz-act", 0, 1, "fz_double", "not a number")
OUT_OF_RANGE: dict[str, list[tuple[Message, dict[str, object]]]] = {
    "reply": [
        (_RESULT, {"seq": 2**64 - 1}),
        (_RESULT, {"seq": -5, "attempt": 0}),
        (_RESULT, {"attempt": 2**64 - 1}),
        (TimerDue("nobody", 0), {"seq": 2**64 - 1}),
        (TimerDue("waiter", 0), {"seq": -(2**63)}),
        (_LEASE, {"lease_seconds": math.nan}),
        (_LEASE, {"lease_seconds": math.inf}),
        (_LEASE, {"lease_seconds": -1.0}),
        (_LEASE, {"lease_seconds": 1e308}),
    ],
    "act": [
        (_TASK, {"seq": 2**64 - 1, "attempt": 2**64 - 1}),
        (_TASK, {"seq": -3, "attempt": 0}),
    ],
}


def tampered(codec: Codec, message: Message, fields: dict[str, object], app_id: str) -> bytes:
    """``message`` encoded by ``codec`` for ``app_id`` with ``fields`` replaced in its (plain)
    fields map."""
    version, kind, body = msgpack.unpackb(codec.encode_message(message, app_id=app_id))
    data: bytes = msgpack.packb([version, kind, {**body, **fields}], use_bin_type=True)
    return data


@pytest.mark.parametrize("codec_name", sorted(CODECS))
async def test_valid_but_hostile_messages_crash_nothing_and_invalid_ids_are_dead_lettered(
    codec_name: str,
) -> None:
    """Unknown instances, sequence numbers at their bounds, oversized notes and wrong-queue
    kinds crash nothing: a workflow waiting meanwhile still completes with the right event,
    and a new one runs. Messages whose instance IDs, names or app IDs are not valid are
    dead-lettered with a reason (the store never sees them), and so is each message whose
    numbers are out of range (huge or negative seqs, attempt 0, NaN/inf leases)."""
    codec = CODECS[codec_name]
    queue = {"reply": 1, "work": 0, "act": 2}
    with capture_logs() as logs:
        await _publish_hostile_and_check(codec, queue)
    crashes = [entry for entry in logs if entry.get("event") in CRASHES]
    assert not crashes, crashes[:3]
    print(Counter(str(e.get("event")) for e in logs if e.get("log_level") in ("warning", "error")))


async def _publish_hostile_and_check(codec: Codec, queue: dict[str, int]) -> None:
    async with TestEnvironment([fz_host, fz_act], codec=codec) as env:
        waiter = await env.client.start_workflow(
            "fz_wait", None, app_id="fz-host", instance_id="waiter"
        )
        plan = [
            (where, message, message in INVALID_IDS.get(where, []))
            for where, messages in (*INVALID_IDS.items(), *VALID_BUT_HOSTILE.items())
            for message in messages
        ]
        for index, (where, message, _) in enumerate(plan):
            app_id, kind = QUEUES[queue[where]]
            body = codec.encode_message(message, app_id=app_id)
            await env.transport.publish([Outgoing(app_id, kind, body, f"hostile-{index}")])
        for where, cases in OUT_OF_RANGE.items():
            app_id, kind = QUEUES[queue[where]]
            for index, (message, fields) in enumerate(cases):
                body = tampered(codec, message, fields, app_id)
                await env.transport.publish([Outgoing(app_id, kind, body, f"range-{index}")])
        invalid = sum(bad for *_, bad in plan)
        out_of_range = sum(len(cases) for cases in OUT_OF_RANGE.values())
        for _ in range(500):
            dead = env.transport.dead_letters("fz-host") + env.transport.dead_letters("fz-act")
            ranged = [r for _, r in dead if r.startswith("undecodable message: invalid ")]
            if len([r for _, r in dead if r.startswith("invalid ")]) >= invalid and (
                len(ranged) >= out_of_range
            ):
                break
            await asyncio.sleep(0.01)
        reasons = [r for _, r in dead if r.startswith("invalid ")]
        assert len(reasons) == invalid, reasons
        assert len(ranged) == out_of_range, ranged
        assert all("must be" in reason for reason in ranged), ranged
        assert all(len(reason) <= 300 for reason in reasons)
        assert any("invalid instance ID" in r for r in reasons)
        assert any("invalid workflow name" in r for r in reasons)
        assert any("invalid activity name" in r for r in reasons)
        assert any("invalid app ID" in r for r in reasons)

        await waiter.raise_event("go", {"fine": True})
        assert await waiter.result(timeout=10) == {"fine": True}
        await normal_workflow_completes(env)
        # Every stored ID, even unlisted ones: the in-memory store's table itself.
        stored = set(env.stores["fz-host"]._instances)  # noqa: SLF001
        assert not stored & {"bad id!", "*", "{evil}", "ok-1", "ok-2", "ok-3", "ok-5"}


def test_message_problem_accepts_every_valid_sample() -> None:
    for message in [*MESSAGES, *TARGETED]:
        assert message_problem(message) is None, message


def test_decoded_values_keep_their_msgpack_types() -> None:
    """bin stays bytes and str stays str through both codecs (no implicit conversions)."""
    message = StartWorkflow("i-1", "wf", "app", {"b": b"\x80\x81", "s": "\x80"})
    for codec in CODECS.values():
        assert (
            codec.decode_message(codec.encode_message(message, app_id=HOST), app_id=HOST) == message
        )
