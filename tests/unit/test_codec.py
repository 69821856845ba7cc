"""Tests of flowmesh.codec: round trips, the wire format, encode errors and hostile input."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowmesh._errors import (
    ConfigurationError,
    DecodeError,
    PayloadTooLargeError,
    SerializationError,
)
from flowmesh.codec import DEFAULT_LIMITS, FORMAT_VERSION, Codec, CodecLimits
from flowmesh.codec._convert import ConversionError, build_converter, is_plain_value
from flowmesh.model import (
    HISTORY_EVENT_TYPES,
    MAX_TIME,
    MAX_VALUE_DEPTH,
    MESSAGE_TYPES,
    MIN_TIME,
    ActivityCancel,
    ActivityCompleted,
    ActivityFailed,
    ActivityLease,
    ActivityResult,
    ActivityScheduled,
    ActivityTask,
    ChildResult,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    CompleteWorkflow,
    Control,
    ControlAction,
    Describe,
    EventRaised,
    EventSent,
    FailureDetails,
    FieldRangeError,
    HistoryPage,
    HistoryRequest,
    ParentRef,
    PatchRecorded,
    PendingTask,
    RaiseEvent,
    RetryPolicy,
    StartAck,
    StartWorkflow,
    StateReply,
    StepStarted,
    TaskCancelled,
    TaskNote,
    TimerCreated,
    TimerDue,
    TimerFired,
    WorkflowCompleted,
    WorkflowResumed,
    WorkflowStarted,
    WorkflowState,
    WorkflowStatus,
    WorkflowSuspended,
    WorkflowTerminated,
    check_value,
)

CODEC = Codec()
NOW = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)
FAILURE = FailureDetails(
    error_type="builtins.ValueError",
    message="card declined",
    stack_trace='Traceback (most recent call last):\n  File "x.py", line 1\nValueError',
    non_retryable=True,
    app_id="payments",
)
PARENT = ParentRef(instance_id="parent-1", app_id="orders", seq=4)
STATE = WorkflowState(
    instance_id="order-17",
    app_id="orders",
    name="process_order",
    status=WorkflowStatus.RUNNING,
    input={"order": 17, "items": ["a", "b"], 3: b"\x00\xff"},
    output=None,
    failure=FAILURE,
    custom_status={"stage": "charging", "progress": 0.5},
    created_at=NOW,
    updated_at=NOW + timedelta(seconds=5),
    parent=PARENT,
    waiting_on=(
        PendingTask("activity", "charge", "payments", 3, NOW, "attempt 2"),
        PendingTask("timer", "retry"),
    ),
    stall_reason="",
    history_length=12,
    version=5,
)

MESSAGES = [
    StartWorkflow("order-17", "process_order", "orders", {"order": 17}, PARENT),
    StartWorkflow("order-18", "process_order", "orders"),
    ActivityTask("order-17", "orders", "payments", 3, 2, "charge", [1, 2.5, "x", None, True]),
    ActivityCancel("order-17", "orders", "payments", 3, 2, "run-1"),
    ActivityResult("order-17", 3, 2, output={"receipt": "r-1"}),
    ActivityResult("order-17", 3, 2, failure=FAILURE),
    ActivityLease("order-17", 3, 2, 300.0, "gpu-trainer/1234"),
    TaskNote("order-17", 3, 2, "activity 'train' is not registered on app 'gpu-trainer'"),
    ChildResult("order-17", 5, "order-17-child", output=[1, 2]),
    ChildResult("order-17", 5, "order-17-child", failure=FAILURE),
    TimerDue("order-17", 6),
    RaiseEvent("order-17", "approved", {"by": "alice", "at": 1_715_949_045}),
    *(Control("order-17", action, "operator", recursive=True) for action in ControlAction),
    Control("order-17", ControlAction.RESTART, new_instance_id="order-17-again"),
    HistoryRequest("order-17", start=2000, max_bytes=65536),
    HistoryPage("order-17", True, "r1", 2000, (b"\x93\x01\xabStepStarted", b""), more=True),
    HistoryPage("nope"),
    StateReply("order-17", None, purged=3, not_purged=("child 'c' on app 'a': no answer",)),
    Describe("order-17", wait=True),
    StartAck("order-17", created=False, error="already exists"),
    StateReply("order-17", STATE),
    StateReply("nope", None, error="not found"),
]

EVENTS = [
    WorkflowStarted("process_order", "order-17", "orders", {"order": 17}, PARENT),
    WorkflowStarted("process_order", "order-18", "orders"),
    StepStarted(NOW),
    ActivityScheduled(3, "charge", "payments", {"amount": 12}, attempt=2),
    ActivityCompleted(3, {"receipt": "r-1"}),
    ActivityFailed(3, FAILURE),
    ChildWorkflowScheduled(5, "ship", "shipping", "order-17-child", ["box"]),
    ChildWorkflowCompleted(5, "shipped"),
    ChildWorkflowFailed(5, FAILURE),
    TimerCreated(6, NOW + timedelta(hours=1)),
    TimerFired(6),
    EventRaised("approved", {"by": "alice"}),
    EventSent(7, "order-18", "orders", "approved"),
    TaskCancelled(3),
    PatchRecorded("use-new-pricing"),
    WorkflowSuspended("maintenance"),
    WorkflowResumed(),
    WorkflowTerminated("cancelled", recursive=True),
    WorkflowCompleted(WorkflowStatus.COMPLETED, output={"total": 12}),
    WorkflowCompleted(WorkflowStatus.FAILED, failure=FAILURE),
]


def _name(value: object) -> str:
    return type(value).__name__


def pack(obj: object) -> bytes:
    """Pack a hand-made structure the way another implementation would."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def envelope_of(data: bytes) -> list[object]:
    """Unpack an encoded blob to its raw envelope, for tests that tamper with it."""
    raw: list[object] = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return raw


def body_of(message: object) -> dict[str, object]:
    """The raw field map of ``message`` as the codec writes it."""
    if isinstance(message, WorkflowState):
        data = CODEC.encode_state(message)
    elif isinstance(message, MESSAGE_TYPES):
        data = CODEC.encode_message(message)
    else:
        data = CODEC.encode_event(message)  # type: ignore[arg-type]
    body = envelope_of(data)[2]
    assert isinstance(body, dict)
    return body


def nested_lists(levels: int) -> object:
    """``levels`` lists nested inside each other, the innermost empty."""
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=_name)
def test_every_message_round_trips_to_an_equal_message(message: object) -> None:
    """decode_message(encode_message(m)) == m for every message kind."""
    data = CODEC.encode_message(message)  # type: ignore[arg-type]
    assert CODEC.decode_message(data) == message


@pytest.mark.parametrize("event", EVENTS, ids=_name)
def test_every_history_event_round_trips_to_an_equal_event(event: object) -> None:
    """decode_event(encode_event(e)) == e for every history event kind."""
    data = CODEC.encode_event(event)  # type: ignore[arg-type]
    assert CODEC.decode_event(data) == event


def test_samples_cover_every_message_and_event_type() -> None:
    """The round-trip samples include every class in MESSAGE_TYPES and HISTORY_EVENT_TYPES."""
    assert {type(m) for m in MESSAGES} == set(MESSAGE_TYPES)
    assert {type(e) for e in EVENTS} == set(HISTORY_EVENT_TYPES)


def test_workflow_state_round_trips_with_nested_dataclasses_datetimes_and_enums() -> None:
    """A WorkflowState with ParentRef, FailureDetails, PendingTasks and datetimes round-trips."""
    decoded = CODEC.decode_state(CODEC.encode_state(STATE))
    assert decoded == STATE
    assert isinstance(decoded.status, WorkflowStatus)
    assert isinstance(decoded.waiting_on, tuple)
    assert decoded.created_at is not None
    assert decoded.created_at.tzinfo is UTC


def test_minimal_workflow_state_round_trips_with_all_defaults() -> None:
    """Defaults (None datetimes and parent, empty waiting_on) survive a round trip."""
    state = WorkflowState("i-1", "app", "wf", WorkflowStatus.PENDING)
    assert CODEC.decode_state(CODEC.encode_state(state)) == state


def test_non_utc_datetime_decodes_to_the_same_instant_in_utc() -> None:
    """An aware non-UTC datetime is stored as an instant and comes back in UTC."""
    local = datetime(2024, 5, 17, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    decoded = CODEC.decode_event(CODEC.encode_event(StepStarted(local)))
    assert isinstance(decoded, StepStarted)
    assert decoded.timestamp == local
    assert decoded.timestamp.tzinfo is UTC
    assert decoded.timestamp.hour == 12


def test_datetimes_keep_microsecond_precision_at_range_edges() -> None:
    """Datetimes at both edges of the allowed range (model.MIN_TIME, MAX_TIME) round-trip."""
    for moment in (
        MIN_TIME,
        datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        MAX_TIME - timedelta(microseconds=1),
    ):
        event = TimerCreated(1, moment)
        assert CODEC.decode_event(CODEC.encode_event(event)) == event


def test_tuples_in_user_values_come_back_as_lists() -> None:
    """User-value tuples travel as msgpack arrays and decode as lists (documented)."""
    task = ActivityTask("i-1", "a", "b", 1, 1, "act", (1, (2, 3)))
    decoded = CODEC.decode_message(CODEC.encode_message(task))
    assert isinstance(decoded, ActivityTask)
    assert decoded.input == [1, [2, 3]]


def test_str_enum_member_as_user_value_is_sent_as_its_string() -> None:
    """check_value accepts str subclasses, so a StrEnum member in a user value becomes a str."""
    task = ActivityTask("i-1", "a", "b", 1, 1, "act", {"status": WorkflowStatus.FAILED})
    decoded = CODEC.decode_message(CODEC.encode_message(task))
    assert isinstance(decoded, ActivityTask)
    assert decoded.input == {"status": "FAILED"}
    assert isinstance(decoded.input, dict)
    assert type(decoded.input["status"]) is str


def test_user_value_at_the_maximum_depth_decodes_inside_a_state_reply() -> None:
    """A value as deep as check_value allows, in the deepest envelope, fits max_depth."""
    deepest = nested_lists(MAX_VALUE_DEPTH + 1)
    check_value(deepest, "test")
    state = dataclasses.replace(STATE, input=deepest)
    reply = StateReply("order-17", state)
    assert CODEC.decode_message(CODEC.encode_message(reply)) == reply


user_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text() | st.integers(-(2**63), 2**64 - 1), children, max_size=5)
    ),
    max_leaves=25,
)


@given(value=user_values)
def test_any_msgpack_native_user_value_round_trips_in_an_activity_task(value: object) -> None:
    """Arbitrary nested None/bool/int/float/str/bytes/list/dict values survive unchanged."""
    task = ActivityTask("i-1", "orders", "payments", 1, 1, "charge", value)
    assert CODEC.decode_message(CODEC.encode_message(task)) == task


@given(value=user_values | st.sets(st.integers(), max_size=3) | st.datetimes())
def test_fast_value_check_never_accepts_what_check_value_rejects(value: object) -> None:
    """is_plain_value (the hot-path check) is never more lenient than model.check_value."""
    if is_plain_value(value):
        check_value(value, "test")


def test_fast_value_check_applies_the_same_depth_limit_as_check_value() -> None:
    """Values one level too deep for check_value are not passed by the fast check either."""
    assert is_plain_value(nested_lists(MAX_VALUE_DEPTH + 1))
    assert not is_plain_value(nested_lists(MAX_VALUE_DEPTH + 2))
    with pytest.raises(SerializationError):
        check_value(nested_lists(MAX_VALUE_DEPTH + 2), "test")


def test_codec_is_safe_to_share_between_threads() -> None:
    """Concurrent encodes from many threads each produce their own correct bytes."""
    barrier = threading.Barrier(8)

    def work(index: int) -> bool:
        task = ActivityTask(f"i-{index}", "a", "b", index, 1, "act", {"n": list(range(index))})
        barrier.wait()
        return all(CODEC.decode_message(CODEC.encode_message(task)) == task for _ in range(300))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(work, range(8)))


# --- the wire format (pins docs/protocol-codec.md) ----------------------------------------


def test_wire_format_is_a_versioned_array_of_version_kind_and_field_map() -> None:
    """TimerDue encodes to exactly [1, "TimerDue", {"instance_id", "seq", "run_id"}]."""
    data = CODEC.encode_message(TimerDue("i-1", 3, "r1"))
    assert data == (b"\x93\x01\xa8TimerDue\x83\xabinstance_id\xa3i-1\xa3seq\x03\xa6run_id\xa2r1")
    assert FORMAT_VERSION == 1


def test_wire_format_of_datetimes_enums_optionals_and_nested_dataclasses() -> None:
    """Datetimes are int microseconds since the epoch (no ext types), enums their value,
    None is nil, nested dataclasses are field maps and tuples are arrays."""
    moment = datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    state = WorkflowState(
        "i-1",
        "app",
        "wf",
        WorkflowStatus.STALLED,
        created_at=moment,
        parent=ParentRef("p-1", "app", 2),
        waiting_on=(PendingTask("event", "go"),),
    )
    assert envelope_of(CODEC.encode_state(state)) == [
        1,
        "WorkflowState",
        {
            "instance_id": "i-1",
            "app_id": "app",
            "name": "wf",
            "status": "STALLED",
            "input": None,
            "output": None,
            "failure": None,
            "custom_status": None,
            "created_at": 1_704_067_200_000_001,
            "updated_at": None,
            "parent": {"instance_id": "p-1", "app_id": "app", "seq": 2, "run_id": ""},
            "waiting_on": [
                {"kind": "event", "name": "go", "app_id": "", "seq": 0, "since": None, "detail": ""}
            ],
            "stall_reason": "",
            "history_length": 0,
            "version": 0,
            "run_id": "",
            "refusals": [],
            "publish_problem": "",
        },
    ]


DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol-codec.md"


def test_protocol_doc_lists_every_kind_with_its_fields_in_order() -> None:
    """docs/protocol-codec.md names each message and event kind with the model's fields."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\| `(\w+)` \| (`.*)\|$", line)
        if found:
            rows[found[1]] = re.findall(r"`(\w+): ", found[2])
    for cls in (*MESSAGE_TYPES, *HISTORY_EVENT_TYPES):
        assert rows.get(cls.__name__) == [f.name for f in dataclasses.fields(cls)], cls.__name__


def test_bytes_travel_as_msgpack_bin_and_strings_as_str() -> None:
    """use_bin_type: bytes and str stay distinct on the wire and after decoding."""
    task = ActivityTask("i-1", "a", "b", 1, 1, "act", [b"\x01", "\x01"])
    data = CODEC.encode_message(task)
    assert b"\xc4\x01\x01" in data  # bin 8, length 1
    decoded = CODEC.decode_message(data)
    assert isinstance(decoded, ActivityTask)
    assert decoded.input == [b"\x01", "\x01"]


def test_unknown_extra_fields_are_ignored_on_decode() -> None:
    """A newer peer's additional fields do not break an older decoder."""
    body = body_of(TimerDue("i-1", 3))
    body["added_in_v1_5"] = {"x": [1, 2]}
    assert CODEC.decode_message(pack([1, "TimerDue", body])) == TimerDue("i-1", 3)


def test_missing_fields_with_defaults_take_their_defaults() -> None:
    """Only required fields must be present; others default as in the dataclass."""
    data = pack(
        [1, "ActivityTask", {k: v for k, v in body_of(MESSAGES[2]).items() if k != "input"}]
    )
    decoded = CODEC.decode_message(data)
    assert isinstance(decoded, ActivityTask)
    assert decoded.input is None
    minimal = pack(
        [1, "WorkflowState", {"instance_id": "i", "app_id": "a", "name": "w", "status": "RUNNING"}]
    )
    assert CODEC.decode_state(minimal) == WorkflowState("i", "a", "w", WorkflowStatus.RUNNING)


def test_int_keys_in_user_dicts_round_trip() -> None:
    """User dicts with int keys (allowed by check_value) decode with int keys."""
    event = EventRaised("e", {1: "a", -2: {3: "b"}})
    assert CODEC.decode_event(CODEC.encode_event(event)) == event


def test_codec_exposes_its_limits_and_defaults_to_the_documented_ones() -> None:
    """Codec.limits is what it was built with; the defaults are 4 MiB, 64 levels, 1M items."""
    assert CODEC.limits == DEFAULT_LIMITS == CodecLimits(4 * 1024 * 1024, 64, 1_000_000)
    limits = CodecLimits(max_message_bytes=1000)
    assert Codec(limits).limits is limits


@pytest.mark.parametrize("field", ["max_message_bytes", "max_depth", "max_collection_len"], ids=str)
@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_codec_limits_reject_non_positive_or_non_int_values(field: str, bad: object) -> None:
    """CodecLimits raises ConfigurationError naming the field for a bad value."""
    with pytest.raises(ConfigurationError, match=field):
        CodecLimits(**{field: bad})  # type: ignore[arg-type]


# --- encode errors ------------------------------------------------------------------------


class Money:
    """A user class the codec cannot carry."""


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "builtins.object"),
        ({1, 2}, "builtins.set"),
        (Money(), "Money"),
        (NOW, "datetime.datetime"),
        ({"nested": [1, frozenset()]}, "builtins.frozenset"),
    ],
    ids=["object", "set", "custom-class", "datetime", "nested-frozenset"],
)
def test_unserialisable_user_value_names_its_type_and_the_given_where(
    value: object, type_name: str
) -> None:
    """SerializationError's message contains the value's type name and the caller's where."""
    task = ActivityTask("order-17", "orders", "payments", 3, 1, "charge", value)
    with pytest.raises(SerializationError) as info:
        CODEC.encode_message(task, where="input of activity 'charge'")
    assert "input of activity 'charge'" in str(info.value)
    assert type_name in str(info.value)
    assert not isinstance(info.value, PayloadTooLargeError)


@pytest.mark.parametrize(
    ("message", "where"),
    [
        (
            ActivityTask("order-17", "orders", "payments", 3, 1, "charge", {1, 2}),
            "input of activity 'charge' (instance order-17)",
        ),
        (
            ActivityResult("order-17", 3, 1, output={1, 2}),
            "output of activity task seq 3 of instance order-17",
        ),
        (
            StartWorkflow("order-17", "process_order", "orders", {1, 2}),
            "input of workflow 'process_order' (instance order-17)",
        ),
        (
            RaiseEvent("order-17", "approved", {1, 2}),
            "data of event 'approved' for instance order-17",
        ),
        (
            ChildResult("order-17", 5, "child-1", output={1, 2}),
            "output of child workflow child-1 (task seq 5 of instance order-17)",
        ),
        (
            StateReply("order-17", dataclasses.replace(STATE, custom_status={1, 2})),
            "custom status of instance order-17",
        ),
        (
            StateReply("order-17", dataclasses.replace(STATE, output={1, 2})),
            "output of instance order-17",
        ),
    ],
    ids=lambda v: _name(v) if not isinstance(v, str) else "",
)
def test_without_where_the_error_derives_one_from_the_message(message: object, where: str) -> None:
    """An empty where is replaced by a description of whose value it is."""
    with pytest.raises(SerializationError) as info:
        CODEC.encode_message(message)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{where}: ")
    assert "builtins.set" in str(info.value)


def test_explicit_where_names_the_field_when_a_message_has_several_user_values() -> None:
    """For StateReply the given where is followed by the failing field's path."""
    reply = StateReply("order-17", dataclasses.replace(STATE, custom_status=Money()))
    with pytest.raises(
        SerializationError, match=r"^describe reply \(StateReply\.state\.custom_status\)"
    ):
        CODEC.encode_message(reply, where="describe reply")


@pytest.mark.parametrize(
    ("event", "where"),
    [
        (WorkflowStarted("wf", "i-1", "app", {1}), "input of workflow 'wf' (instance i-1)"),
        (ActivityScheduled(3, "charge", "pay", {1}), "input of activity 'charge' (task seq 3)"),
        (ActivityCompleted(3, {1}), "output of activity task seq 3"),
        (EventRaised("approved", {1}), "data of event 'approved'"),
        (WorkflowCompleted(WorkflowStatus.COMPLETED, {1}), "output of the workflow"),
    ],
    ids=lambda v: _name(v) if not isinstance(v, str) else "",
)
def test_event_encode_errors_say_whose_value_failed(event: object, where: str) -> None:
    """encode_event derives a where from the event for unserialisable user values."""
    with pytest.raises(SerializationError, match=r"builtins\.set") as info:
        CODEC.encode_event(event)  # type: ignore[arg-type]
    assert str(info.value).startswith(where)


def test_encode_state_error_names_the_state_field() -> None:
    """encode_state says which user value of which workflow failed."""
    with pytest.raises(SerializationError) as info:
        CODEC.encode_state(dataclasses.replace(STATE, input=Money()))
    assert str(info.value).startswith("input of workflow 'process_order' (instance order-17)")


def test_user_value_nested_too_deep_is_refused_on_encode() -> None:
    """Values deeper than MAX_VALUE_DEPTH raise SerializationError before reaching the wire."""
    with pytest.raises(SerializationError, match="nested deeper"):
        CODEC.encode_message(RaiseEvent("i-1", "e", nested_lists(MAX_VALUE_DEPTH + 2)))


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1])
def test_int_outside_64_bits_is_refused_on_encode(number: int) -> None:
    """Ints msgpack cannot carry raise SerializationError in user values; typed int fields
    have narrower ranges, so such a seq is refused when the message is built."""
    with pytest.raises(SerializationError, match="64-bit"):
        CODEC.encode_message(RaiseEvent("i-1", "e", [number]))
    with pytest.raises(FieldRangeError, match=r"TimerDue\.seq"):
        TimerDue("i-1", number)


def test_str_msgpack_cannot_pack_raises_serialization_error_naming_the_field() -> None:
    """A lone surrogate passes check_value but not msgpack: SerializationError with the field."""
    with pytest.raises(SerializationError, match="field 'input'") as info:
        CODEC.encode_message(ActivityTask("i-1", "a", "b", 1, 1, "act", "\ud800"))
    assert str(info.value).startswith("input of activity 'act' (instance i-1)")
    assert isinstance(info.value.__cause__, UnicodeEncodeError)


@pytest.mark.parametrize(
    ("message", "path", "reason"),
    [
        (TimerDue("i-1", "3"), "TimerDue.seq", "expected int, got str"),  # type: ignore[arg-type]
        (TimerDue("i-1", True), "TimerDue.seq", "expected int, got bool"),
        (Describe(7), "Describe.instance_id", "expected str, got int"),  # type: ignore[arg-type]
        (Control("i-1", "explode"), "Control.action", "is not a ControlAction"),  # type: ignore[arg-type]
        (
            StateReply(
                "i-1",
                dataclasses.replace(
                    STATE, waiting_on=(PendingTask("timer", "t", since=datetime(2024, 1, 1)),)
                ),
            ),
            "StateReply.state.waiting_on[0].since",
            "naive datetime",
        ),
        (
            StartWorkflow("i-1", "wf", "app", parent="p-1"),  # type: ignore[arg-type]
            "StartWorkflow.parent",
            "expected ParentRef, got str",
        ),
    ],
    ids=["str-seq", "bool-seq", "int-id", "bad-enum", "naive-datetime", "wrong-nested"],
)
def test_typed_field_of_the_wrong_type_is_refused_naming_the_field(
    message: object, path: str, reason: str
) -> None:
    """A model field holding the wrong type raises SerializationError with its path."""
    with pytest.raises(SerializationError) as info:
        CODEC.encode_message(message)  # type: ignore[arg-type]
    assert f"field {path}: " in str(info.value)
    assert reason in str(info.value)


def test_plain_enum_value_in_an_enum_field_is_accepted() -> None:
    """A str equal to an enum value encodes like the member and decodes as the member."""
    decoded = CODEC.decode_message(CODEC.encode_message(Control("i-1", "suspend")))  # type: ignore[arg-type]
    assert decoded == Control("i-1", ControlAction.SUSPEND)


def test_encoding_the_wrong_kind_of_object_is_a_type_error() -> None:
    """An event passed to encode_message (or a message to encode_event) is a programming error."""
    with pytest.raises(TypeError, match="TimerFired"):
        CODEC.encode_message(TimerFired(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TimerDue"):
        CODEC.encode_event(TimerDue("i-1", 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PendingTask"):
        CODEC.encode_state(PendingTask("timer", "t"))  # type: ignore[arg-type]


def test_oversized_message_raises_payload_too_large_with_size_limit_and_where() -> None:
    """Encoded size over max_message_bytes raises PayloadTooLargeError naming both and where."""
    codec = Codec(CodecLimits(max_message_bytes=1000))
    task = ActivityTask("i-1", "a", "b", 1, 1, "charge", "x" * 1000)
    with pytest.raises(PayloadTooLargeError) as info:
        codec.encode_message(task, where="input of activity 'charge'")
    text = str(info.value)
    assert "input of activity 'charge'" in text
    assert "1000-byte limit" in text
    assert f"is {len(CODEC.encode_message(task))} bytes" in text
    assert isinstance(info.value, SerializationError)


def test_oversized_event_and_state_are_refused_so_nothing_undecodable_is_stored() -> None:
    """encode_event and encode_state apply the same size limit as the decoders."""
    codec = Codec(CodecLimits(max_message_bytes=500))
    with pytest.raises(PayloadTooLargeError, match="output of activity task seq 1"):
        codec.encode_event(ActivityCompleted(1, "x" * 500))
    with pytest.raises(PayloadTooLargeError, match="state of workflow 'process_order'"):
        codec.encode_state(dataclasses.replace(STATE, output="x" * 500))


def test_message_exactly_at_the_limit_is_accepted() -> None:
    """The limit is inclusive: a blob of exactly max_message_bytes encodes and decodes."""
    size = len(CODEC.encode_message(RaiseEvent("i-1", "e", "x" * 100)))
    codec = Codec(CodecLimits(max_message_bytes=size))
    message = RaiseEvent("i-1", "e", "x" * 100)
    assert codec.decode_message(codec.encode_message(message)) == message


# --- decode errors ------------------------------------------------------------------------


def test_deeply_nested_arrays_are_refused() -> None:
    """10,000 nested arrays (beyond msgpack's own stack) raise DecodeError, not a crash."""
    with pytest.raises(DecodeError, match="nest"):
        CODEC.decode_message(b"\x91" * 10000 + b"\xc0")


def test_nesting_beyond_max_depth_inside_a_valid_envelope_is_refused() -> None:
    """A user value nested past CodecLimits.max_depth raises DecodeError naming the limit."""
    body = body_of(RaiseEvent("i-1", "e"))
    body["data"] = nested_lists(100)
    with pytest.raises(DecodeError, match=r"deeper than 64 levels \(CodecLimits.max_depth\)"):
        CODEC.decode_message(pack([1, "RaiseEvent", body]))


def test_max_depth_counts_the_envelope_as_the_first_level() -> None:
    """With max_depth=4, [1, kind, {data: [[]]}] fits and one more level does not."""
    codec = Codec(CodecLimits(max_depth=4))
    assert codec.decode_message(
        pack([1, "RaiseEvent", {"instance_id": "i", "name": "e", "data": [[]]}])
    )
    with pytest.raises(DecodeError, match="deeper than 4"):
        codec.decode_message(
            pack([1, "RaiseEvent", {"instance_id": "i", "name": "e", "data": [[[]]]}])
        )


@pytest.mark.parametrize(
    "data",
    [
        pack(
            [1, "RaiseEvent", {"instance_id": "i", "name": "e", "data": msgpack.ExtType(5, b"ab")}]
        ),
        pack([1, "RaiseEvent", {"instance_id": "i", "name": "e", "data": msgpack.Timestamp(1, 0)}]),
        b"\xc7\x00\x05",  # a zero-length ext 8
        b"\xd4\xff\x00",  # fixext 1 with the timestamp type
    ],
    ids=["ext", "timestamp", "empty-ext", "timestamp-fixext"],
)
def test_ext_types_are_refused(data: bytes) -> None:
    """msgpack ext types, Timestamp included, raise DecodeError."""
    with pytest.raises(DecodeError, match="ext"):
        CODEC.decode_message(data)


def test_wrong_envelope_version_says_which_was_found_and_which_is_supported() -> None:
    """Version 2 raises DecodeError naming 2 and the supported version 1."""
    data = pack([2, "TimerDue", {"instance_id": "i-1", "seq": 1}])
    with pytest.raises(DecodeError, match=r"unsupported envelope version 2: .* supports version 1"):
        CODEC.decode_message(data)


def test_unknown_kind_is_refused_naming_it() -> None:
    """A tag that is not a flowmesh class name raises DecodeError naming the tag."""
    with pytest.raises(DecodeError, match=r"unknown message kind 'os\.system'"):
        CODEC.decode_message(pack([1, "os.system", {}]))


@pytest.mark.parametrize("message", [*MESSAGES[:3], MESSAGES[-2]], ids=_name)
def test_every_truncation_of_a_valid_message_is_refused(message: object) -> None:
    """Any proper prefix of an encoded message raises DecodeError."""
    data = CODEC.encode_message(message)  # type: ignore[arg-type]
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            CODEC.decode_message(data[:end])


def test_trailing_bytes_after_a_valid_message_are_refused() -> None:
    """Extra bytes after the envelope raise DecodeError."""
    with pytest.raises(DecodeError, match="trailing"):
        CODEC.decode_message(CODEC.encode_message(TimerDue("i-1", 1)) + b"\x00")


@pytest.mark.parametrize("field", ["instance_id", "seq"])
def test_missing_required_field_is_refused_naming_field_and_kind(field: str) -> None:
    """Dropping a field without a default raises DecodeError with the field and kind."""
    body = body_of(TimerDue("i-1", 1))
    del body[field]
    with pytest.raises(
        DecodeError, match=f"TimerDue message: field '{field}': required field is missing"
    ):
        CODEC.decode_message(pack([1, "TimerDue", body]))


@pytest.mark.parametrize(
    ("sample", "field", "value", "path", "reason"),
    [
        (TimerDue("i-1", 1), "seq", "1", "seq", "expected int, got str"),
        (TimerDue("i-1", 1), "seq", True, "seq", "expected int, got bool"),
        (TimerDue("i-1", 1), "seq", 1.0, "seq", "expected int, got float"),
        (TimerDue("i-1", 1), "instance_id", b"i-1", "instance_id", "expected str, got bin"),
        (Describe("i-1"), "wait", 1, "wait", "expected bool, got int"),
        (StepStarted(NOW), "timestamp", "2024-05-17T12:30:45Z", "timestamp", "expected int"),
        (StepStarted(NOW), "timestamp", 2**63, "timestamp", "outside the datetime range"),
        (
            Control("i-1", ControlAction.PURGE),
            "action",
            "explode",
            "action",
            "is not a ControlAction",
        ),
        (Control("i-1", ControlAction.PURGE), "action", 1, "action", "is not a ControlAction"),
        (WorkflowCompleted(WorkflowStatus.COMPLETED), "status", "done", "status", "WorkflowStatus"),
        (
            ActivityFailed(1, FAILURE),
            "failure",
            ["x"],
            "failure",
            "expected a map of fields, got array",
        ),
        (
            ActivityFailed(1, FAILURE),
            "failure",
            {"error_type": "E"},
            "failure.message",
            "required field is missing",
        ),
        (
            StartWorkflow("i", "w", "a", parent=PARENT),
            "parent",
            {"instance_id": "p", "app_id": "a", "seq": "4"},
            "parent.seq",
            "expected int",
        ),
        (StateReply("i", STATE), "state", "RUNNING", "state", "expected a map"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_field_of_the_wrong_wire_type_is_refused_naming_field_and_kind(
    sample: object, field: str, value: object, path: str, reason: str
) -> None:
    """A field whose wire value does not fit its type raises DecodeError with kind and path."""
    body = body_of(sample)
    body[field] = value
    kind = type(sample).__name__
    data = pack([1, kind, body])
    decode = CODEC.decode_message if isinstance(sample, MESSAGE_TYPES) else CODEC.decode_event
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert f"invalid {kind} " in str(info.value)
    assert f"field {path!r}: " in str(info.value)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("soon", "state.waiting_on[1].since"),
        ({"kind": "timer"}, "state.waiting_on[1].name"),
    ],
)
def test_wrong_types_deep_inside_a_state_reply_are_reported_with_their_path(
    value: object, path: str
) -> None:
    """Errors inside tuples of nested dataclasses name the element index."""
    body = body_of(StateReply("order-17", STATE))
    state = body["state"]
    assert isinstance(state, dict)
    waiting = state["waiting_on"]
    assert isinstance(waiting, list)
    waiting[1] = {**waiting[1], "since": value} if isinstance(value, str) else value
    with pytest.raises(DecodeError, match=re.escape(f"field '{path}'")):
        CODEC.decode_message(pack([1, "StateReply", body]))


def test_tuple_field_that_is_not_an_array_is_refused() -> None:
    """waiting_on must be an array on the wire."""
    body = body_of(STATE)
    body["waiting_on"] = {"0": {}}
    with pytest.raises(DecodeError, match="field 'waiting_on': expected array, got map"):
        CODEC.decode_state(pack([1, "WorkflowState", body]))


def test_oversized_input_is_refused_before_unpacking() -> None:
    """Input longer than max_message_bytes raises DecodeError without being parsed."""
    codec = Codec(CodecLimits(max_message_bytes=100))
    with pytest.raises(DecodeError, match="101 bytes, more than the 100-byte limit"):
        codec.decode_message(b"\xc1" * 101)  # invalid msgpack: proves no parsing happened


def test_collection_longer_than_max_collection_len_is_refused() -> None:
    """An array or map with more items than max_collection_len raises DecodeError."""
    codec = Codec(CodecLimits(max_collection_len=10))
    body = body_of(RaiseEvent("i-1", "e"))
    body["data"] = list(range(11))
    with pytest.raises(DecodeError, match="longer than allowed"):
        codec.decode_message(pack([1, "RaiseEvent", body]))
    body["data"] = list(range(10))
    assert codec.decode_message(pack([1, "RaiseEvent", body])) == RaiseEvent(
        "i-1", "e", list(range(10))
    )
    body["data"] = dict.fromkeys(range(11))
    with pytest.raises(DecodeError, match="longer than allowed"):
        codec.decode_message(pack([1, "RaiseEvent", body]))
    body["data"] = dict.fromkeys(range(10))
    assert codec.decode_message(pack([1, "RaiseEvent", body])) == RaiseEvent(
        "i-1", "e", body["data"]
    )


def test_array_header_claiming_more_items_than_the_input_holds_is_refused() -> None:
    """A 5-byte header declaring 4 billion items fails fast instead of allocating."""
    with pytest.raises(DecodeError):
        CODEC.decode_message(b"\xdd\xff\xff\xff\xff")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (CODEC.encode_event(TimerFired(1)), "expected a message, got a history event (TimerFired)"),
        (CODEC.encode_state(STATE), "expected a message, got a workflow state (WorkflowState)"),
    ],
    ids=["event", "state"],
)
def test_decode_message_refuses_events_and_states(data: bytes, reason: str) -> None:
    """A history event or state blob given to decode_message raises DecodeError."""
    with pytest.raises(DecodeError, match=re.escape(reason)):
        CODEC.decode_message(data)


def test_decode_event_and_decode_state_refuse_other_kinds() -> None:
    """Messages are not events or states, and events are not states."""
    with pytest.raises(DecodeError, match="expected a history event, got a message"):
        CODEC.decode_event(CODEC.encode_message(TimerDue("i-1", 1)))
    with pytest.raises(DecodeError, match="expected a workflow state, got a history event"):
        CODEC.decode_state(CODEC.encode_event(TimerFired(1)))
    with pytest.raises(DecodeError, match="expected a workflow state, got a message"):
        CODEC.decode_state(CODEC.encode_message(StateReply("i", STATE)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "incomplete"),
        (b"\xc1", "not valid msgpack"),
        (pack({"v": 1}), "expected an array"),
        (pack([]), "expected an array"),
        (pack(["1", "TimerDue", {}]), "envelope version is a str"),
        (pack([1, "TimerDue"]), "has 3 items"),
        (pack([1, "TimerDue", {}, None]), "has 3 items"),
        (pack([1, 7, {}]), "kind is a int"),
        (b"\x93\x01\xa2\xff\xfe\x80", "not valid UTF-8"),
        (
            pack([1, "RaiseEvent", {"instance_id": "i", "name": "e", "data": {1.5: 1}}]),
            "map key of type float",
        ),
        (
            pack([1, "RaiseEvent", {"instance_id": "i", "name": "e", "data": {True: 1}}]),
            "map key of type bool",
        ),
        (
            pack([1, "RaiseEvent", {"instance_id": "i", "name": "e", "data": {b"k": 1}}]),
            "map key of type bytes",
        ),
        (b"\x81\x91\x01\x02", "invalid map key"),
    ],
    ids=[
        "empty",
        "reserved-byte",
        "map-envelope",
        "empty-array",
        "str-version",
        "short-envelope",
        "long-envelope",
        "int-kind",
        "bad-utf8",
        "float-key",
        "bool-key",
        "bytes-key",
        "array-key",
    ],
)
def test_malformed_envelopes_and_values_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    """Each malformation raises DecodeError whose message says what is wrong."""
    with pytest.raises(DecodeError, match=reason):
        CODEC.decode_message(data)


@given(data=st.binary(max_size=300))
@settings(max_examples=400)
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    """Fuzz: random bytes never raise anything but DecodeError from any decoder."""
    for decode in (CODEC.decode_message, CODEC.decode_event, CODEC.decode_state):
        with contextlib.suppress(DecodeError):
            decode(data)


# Plausible envelopes: right version and real tags, with fields of random types.
_TAGS = [cls.__name__ for cls in (*MESSAGE_TYPES, *HISTORY_EVENT_TYPES, WorkflowState)]
_FIELDS = sorted(
    {
        f.name
        for cls in (*MESSAGE_TYPES, *HISTORY_EVENT_TYPES, WorkflowState, PendingTask)
        for f in dataclasses.fields(cls)
    }
)
_wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.sampled_from(["RUNNING", "suspend"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(_FIELDS) | st.integers(0, 3) | st.floats(), children, max_size=4
        )
    ),
    max_leaves=15,
)


@given(
    version=st.sampled_from([1, 1, 1, 0, 2, -1, 2**64 - 1]),
    tag=st.sampled_from(_TAGS),
    body=st.dictionaries(st.sampled_from(_FIELDS), _wire_values, max_size=8) | _wire_values,
    flip=st.none() | st.tuples(st.integers(0, 2000), st.integers(0, 255)),
)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_plausible_but_wrong_envelopes_decode_or_raise_decode_error(
    version: int, tag: str, body: object, flip: tuple[int, int] | None
) -> None:
    """Fuzz: envelopes with real tags and random fields (and a flipped byte) only ever decode
    or raise DecodeError."""
    data = bytearray(pack([version, tag, body]))
    if flip is not None:
        data[flip[0] % len(data)] = flip[1]
    for decode in (CODEC.decode_message, CODEC.decode_event, CODEC.decode_state):
        with contextlib.suppress(DecodeError):
            decode(bytes(data))


# --- the generic converter ----------------------------------------------------------------


def test_converter_handles_timedelta_float_and_tuple_of_str_fields() -> None:
    """RetryPolicy (timedelta, timedelta | None, float, tuple[str, ...]) converts both ways."""
    converter = build_converter(RetryPolicy)
    policy = RetryPolicy(5, timedelta(milliseconds=1500), 1.5, timedelta(minutes=2), ("a.B", "C"))
    wire = converter.encode(policy)
    assert wire == {
        "max_attempts": 5,
        "initial_interval": 1_500_000,
        "backoff_coefficient": 1.5,
        "max_interval": 120_000_000,
        "non_retryable_errors": ["a.B", "C"],
        "retry_timeout": None,
    }
    assert converter.decode(wire) == policy
    assert converter.decode({**wire, "backoff_coefficient": 2}).backoff_coefficient == 2.0


def test_converter_reports_model_validation_failures_as_conversion_errors() -> None:
    """A __post_init__ that rejects decoded values becomes a ConversionError, not a ValueError."""
    converter = build_converter(RetryPolicy)
    with pytest.raises(ConversionError, match="max_attempts must be >= 1"):
        converter.decode({"max_attempts": 0})
    with pytest.raises(ConversionError, match="outside the timedelta range"):
        converter.decode({"initial_interval": 10**20})


def test_converter_lists_the_paths_of_user_values() -> None:
    """user_paths finds object-typed fields, nested ones included."""
    assert build_converter(StateReply).user_paths == (
        "state.input",
        "state.output",
        "state.custom_status",
    )
    assert build_converter(TimerDue).user_paths == ()
    assert build_converter(CompleteWorkflow).user_paths == ("output", "carried_events[].data")


@dataclasses.dataclass(frozen=True)
class Odd:
    """A dataclass whose field type has no wire form."""

    items: set[int]


def test_converter_refuses_field_types_without_a_wire_form() -> None:
    """A dataclass field typed, say, set[int] is a TypeError when the converter is built."""

    with pytest.raises(TypeError, match="no wire form"):
        build_converter(Odd)


class Level(enum.IntEnum):
    """An int-valued enum, to check the decoder's exact wire-type test."""

    LOW = 1


@dataclasses.dataclass(frozen=True)
class Leveled:
    """A dataclass with an IntEnum field."""

    level: Level


def test_int_enum_decoder_does_not_take_bool_for_int() -> None:
    """Enum fields compare wire types exactly: true is not IntEnum member 1."""
    converter = build_converter(Leveled)
    assert converter.decode({"level": 1}) == Leveled(Level.LOW)
    with pytest.raises(ConversionError, match="is not a Level"):
        converter.decode({"level": True})
