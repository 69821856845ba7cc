"""Numeric and time fields out of range for their meaning are refused at the decoding boundary.

Each rule lives in ``flowmesh.model._ranges`` and runs in the dataclass's ``__post_init__``,
so a hostile blob is a ``DecodeError`` naming the field (and the worker dead-letters that one
message), and Python code building the same value gets a ``FieldRangeError`` naming
``Class.field``. The rules are tabled in docs/protocol-codec.md.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta, timezone

import msgpack
import pytest

from flowmesh import WorkerOptions
from flowmesh._errors import DecodeError, SerializationError
from flowmesh.codec import Codec
from flowmesh.model import (
    HISTORY_EVENT_TYPES,
    MAX_DURATION,
    MAX_LEASE_SECONDS,
    MAX_PAGE_BYTES,
    MAX_SEQ,
    MAX_TIME,
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
    EventSent,
    FailureDetails,
    FieldRangeError,
    HistoryPage,
    HistoryRequest,
    ParentRef,
    PendingTask,
    RetryPolicy,
    StartTimer,
    StartWorkflow,
    StateReply,
    StepStarted,
    TaskCancelled,
    TaskNote,
    TimerCreated,
    TimerDue,
    TimerFired,
    WorkflowStarted,
    WorkflowState,
    WorkflowStatus,
)

CODEC = Codec()
NOW = datetime(2024, 5, 17, 12, 30, tzinfo=UTC)
FAILURE = FailureDetails("builtins.ValueError", "boom")
PARENT = ParentRef("parent-1", "orders", 4)
STATE = WorkflowState(
    "order-17",
    "orders",
    "process_order",
    WorkflowStatus.RUNNING,
    created_at=NOW,
    updated_at=NOW,
    parent=PARENT,
    waiting_on=(PendingTask("activity", "charge", "payments", 3, NOW),),
    history_length=12,
    version=5,
)

NAN, INF = math.nan, math.inf


def _micros(moment: datetime) -> int:
    return (moment - MIN_TIME) // timedelta(microseconds=1)


# Bad values as they would arrive on the wire, by the rule of the field.
BAD: dict[str, list[object]] = {
    "lease": [NAN, INF, -INF, 1e300, MAX_LEASE_SECONDS + 1, -1.0, 0.0, 0, -300],
    "seq": [-1, -(2**63), MAX_SEQ + 1, 2**64 - 1],
    "timer_seq": [-MAX_SEQ - 2, -(2**63), MAX_SEQ + 1, 2**64 - 1],
    "attempt": [0, -1, MAX_SEQ + 1, 2**64 - 1],
    "page_bytes": [0, -1, MAX_PAGE_BYTES + 1, 2**64 - 1],
    # Microseconds since the epoch: before 1970, at the (exclusive) bound, beyond datetime.max.
    "time": [-1, -(2**63), _micros(MAX_TIME), 2**63 - 1],
}

# (sample object, path of the field inside its fields map, rule); paths of nested fields
# walk through maps (str) and arrays (int).
FIELDS: list[tuple[object, tuple[str | int, ...], str]] = [
    (ActivityLease("i-1", 3, 2, 300.0, "w"), ("lease_seconds",), "lease"),
    (ActivityLease("i-1", 3, 2, 300.0, "w"), ("seq",), "seq"),
    (ActivityLease("i-1", 3, 2, 300.0, "w"), ("attempt",), "attempt"),
    (ActivityTask("i-1", "orders", "payments", 3, 2, "charge"), ("seq",), "seq"),
    (ActivityTask("i-1", "orders", "payments", 3, 2, "charge"), ("attempt",), "attempt"),
    (ActivityCancel("i-1", "orders", "payments", 3, 2), ("seq",), "seq"),
    (ActivityCancel("i-1", "orders", "payments", 3, 2), ("attempt",), "attempt"),
    (ActivityResult("i-1", 3, 2, "ok"), ("seq",), "seq"),
    (ActivityResult("i-1", 3, 2, "ok"), ("attempt",), "attempt"),
    (TaskNote("i-1", 3, 2, "waiting"), ("seq",), "seq"),
    (TaskNote("i-1", 3, 2, "waiting"), ("attempt",), "attempt"),
    (ChildResult("i-1", 5, "child-1"), ("seq",), "seq"),
    (TimerDue("i-1", 6), ("seq",), "timer_seq"),
    (StartWorkflow("c-1", "ship", "shipping", parent=PARENT), ("parent", "seq"), "seq"),
    (StateReply("order-17", None, purged=3, not_purged=("x",)), ("purged",), "seq"),
    (HistoryRequest("i-1", 2000, 65536), ("start",), "seq"),
    (HistoryRequest("i-1", 2000, 65536), ("max_bytes",), "page_bytes"),
    (HistoryPage("i-1", True, "r1", 2000, (b"\x93\x01",), more=True), ("start",), "seq"),
    (StateReply("order-17", STATE), ("state", "created_at"), "time"),
    (StateReply("order-17", STATE), ("state", "updated_at"), "time"),
    (StateReply("order-17", STATE), ("state", "history_length"), "seq"),
    (StateReply("order-17", STATE), ("state", "version"), "seq"),
    (StateReply("order-17", STATE), ("state", "parent", "seq"), "seq"),
    (StateReply("order-17", STATE), ("state", "waiting_on", 0, "seq"), "seq"),
    (StateReply("order-17", STATE), ("state", "waiting_on", 0, "since"), "time"),
    (WorkflowStarted("wf", "i-1", "orders", parent=PARENT), ("first_seq",), "seq"),
    (WorkflowStarted("wf", "i-1", "orders", parent=PARENT), ("parent", "seq"), "seq"),
    (StepStarted(NOW), ("timestamp",), "time"),
    (ActivityScheduled(3, "charge", "payments", attempt=2), ("seq",), "seq"),
    (ActivityScheduled(3, "charge", "payments", attempt=2), ("attempt",), "attempt"),
    (ActivityCompleted(3, "ok"), ("seq",), "seq"),
    (ActivityFailed(3, FAILURE), ("seq",), "seq"),
    (ChildWorkflowScheduled(5, "ship", "shipping", "child-1"), ("seq",), "seq"),
    (ChildWorkflowCompleted(5, "ok"), ("seq",), "seq"),
    (ChildWorkflowFailed(5, FAILURE), ("seq",), "seq"),
    (TimerCreated(6, NOW), ("seq",), "seq"),
    (TimerCreated(6, NOW), ("fire_at",), "time"),
    (TimerFired(6), ("seq",), "seq"),
    (EventSent(7, "i-2", "orders", "approved"), ("seq",), "seq"),
    (TaskCancelled(3), ("seq",), "seq"),
    (STATE, ("created_at",), "time"),
    (STATE, ("version",), "seq"),
    (STATE, ("waiting_on", 0, "since"), "time"),
]


def _encode(obj: object) -> bytes:
    if isinstance(obj, WorkflowState):
        return CODEC.encode_state(obj)
    if isinstance(obj, HISTORY_EVENT_TYPES):
        return CODEC.encode_event(obj)
    return CODEC.encode_message(obj)  # type: ignore[arg-type]


def _decode(obj: object, data: bytes) -> object:
    """Decode ``data`` with the call of ``obj``'s family (message, event or state)."""
    if isinstance(obj, WorkflowState):
        return CODEC.decode_state(data)
    if isinstance(obj, HISTORY_EVENT_TYPES):
        return CODEC.decode_event(data)
    return CODEC.decode_message(data)


def _tampered(obj: object, path: tuple[str | int, ...], value: object) -> bytes:
    """``obj`` encoded, with the field at ``path`` replaced by ``value`` on the wire."""
    envelope = msgpack.unpackb(_encode(obj), strict_map_key=False)
    node = envelope[2]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    data: bytes = msgpack.packb(envelope, use_bin_type=True)
    return data


def _shown_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


CASES = [
    pytest.param(obj, path, bad, id=f"{type(obj).__name__}.{_shown_path(path)}={bad!r}")
    for obj, path, rule in FIELDS
    for bad in BAD[rule]
]


@pytest.mark.parametrize(("obj", "path", "bad"), CASES)
def test_out_of_range_field_is_a_decode_error_naming_the_field(
    obj: object, path: tuple[str | int, ...], bad: object
) -> None:
    """NaN, inf, 1e300, negative, zero-where-invalid and out-of-range times are refused on
    decode with a DecodeError that names the kind and the field's full path."""
    data = _tampered(obj, path, bad)
    with pytest.raises(DecodeError) as info:
        _decode(obj, data)
    text = str(info.value)
    assert f"invalid {type(obj).__name__} " in text
    assert f"field {_shown_path(path)!r}: " in text, text
    assert "must be" in text or "outside the datetime range" in text, text


@pytest.mark.parametrize(("obj", "path", "rule"), FIELDS, ids=lambda v: repr(v)[:40])
def test_untampered_samples_still_round_trip(
    obj: object, path: tuple[str | int, ...], rule: str
) -> None:
    """The valid samples the bad cases start from decode to themselves."""
    assert _decode(obj, _encode(obj)) == obj


def test_the_decode_error_says_what_the_lease_must_be_and_what_it_got() -> None:
    """The reason a dead-lettered ActivityLease carries reads as a sentence."""
    data = _tampered(ActivityLease("i-1", 3, 2, 300.0), ("lease_seconds",), NAN)
    with pytest.raises(DecodeError) as info:
        CODEC.decode_message(data)
    assert str(info.value) == (
        "invalid ActivityLease message: field 'lease_seconds': must be a finite number of "
        "seconds, more than 0 and at most 31536000 (365 days), got nan"
    )


@pytest.mark.parametrize(
    ("make", "where"),
    [
        (lambda: ActivityLease("i-1", 3, 2, NAN), "ActivityLease.lease_seconds"),
        (lambda: ActivityLease("i-1", 3, 2, INF), "ActivityLease.lease_seconds"),
        (lambda: ActivityLease("i-1", 3, 2, 1e300), "ActivityLease.lease_seconds"),
        (lambda: ActivityLease("i-1", 3, 2, 0), "ActivityLease.lease_seconds"),
        (lambda: ActivityLease("i-1", 3, 0, 300.0), "ActivityLease.attempt"),
        (lambda: ActivityTask("i-1", "a", "b", -1, 1, "act"), "ActivityTask.seq"),
        (lambda: ActivityCancel("i-1", "a", "b", -1, 1), "ActivityCancel.seq"),
        (lambda: ActivityResult("i-1", 3, 0), "ActivityResult.attempt"),
        (lambda: EventSent(-1, "i-2", "a", "e"), "EventSent.seq"),
        (lambda: TaskCancelled(MAX_SEQ + 1), "TaskCancelled.seq"),
        (lambda: TaskNote("i-1", MAX_SEQ + 1, 1, "n"), "TaskNote.seq"),
        (lambda: ChildResult("i-1", -5, "c"), "ChildResult.seq"),
        (lambda: TimerDue("i-1", -MAX_SEQ - 2), "TimerDue.seq"),
        (lambda: ParentRef("p", "a", -1), "ParentRef.seq"),
        (lambda: WorkflowStarted("wf", "i", "a", first_seq=-1), "WorkflowStarted.first_seq"),
        (lambda: StepStarted(datetime(1969, 12, 31, tzinfo=UTC)), "StepStarted.timestamp"),
        (lambda: StepStarted(datetime(9999, 12, 31, tzinfo=UTC)), "StepStarted.timestamp"),
        (lambda: TimerCreated(1, MAX_TIME), "TimerCreated.fire_at"),
        (lambda: StartTimer(1, MAX_TIME + timedelta(days=1)), "StartTimer.fire_at"),
        (lambda: ActivityScheduled(1, "a", "b", attempt=0), "ActivityScheduled.attempt"),
        (lambda: PendingTask("timer", "t", seq=-1), "PendingTask.seq"),
        (
            lambda: PendingTask("timer", "t", since=datetime(1, 1, 1, tzinfo=UTC)),
            "PendingTask.since",
        ),
        (lambda: dataclasses.replace(STATE, version=-1), "WorkflowState.version"),
        (lambda: dataclasses.replace(STATE, history_length=-1), "WorkflowState.history_length"),
        (
            lambda: dataclasses.replace(STATE, created_at=datetime(1900, 1, 1, tzinfo=UTC)),
            "WorkflowState.created_at",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_building_an_out_of_range_value_in_python_fails_naming_class_and_field(
    make: object, where: str
) -> None:
    """The same rules guard construction: FieldRangeError (a ValidationError and ValueError)."""
    with pytest.raises(FieldRangeError, match=rf"^{where} must be .*, got "):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "obj",
    [
        ActivityLease("i-1", 0, 1, 1e-6),
        ActivityLease("i-1", MAX_SEQ, MAX_SEQ, MAX_LEASE_SECONDS),
        ActivityLease("i-1", 0, 1, 300),  # an int lease, as another implementation may send
        TimerDue("i-1", -MAX_SEQ - 1),  # the lease timer of activity MAX_SEQ
        TimerDue("i-1", -1),  # the lease timer of activity 0
        StepStarted(MIN_TIME),
        StepStarted(MAX_TIME - timedelta(microseconds=1)),
        StepStarted(datetime(2024, 1, 1, 3, tzinfo=timezone(timedelta(hours=3)))),
        dataclasses.replace(STATE, version=MAX_SEQ, history_length=0, created_at=MIN_TIME),
    ],
    ids=repr,
)
def test_values_at_the_edges_of_each_range_are_accepted(obj: object) -> None:
    """Bounds are inclusive where documented; negative lease-timer seqs are valid TimerDues."""
    assert _decode(obj, _encode(obj)) == obj


def test_a_naive_datetime_is_still_refused_by_the_codec_on_encode() -> None:
    """Range checks leave types to the codec: a naive datetime fails at encode, by name."""
    with pytest.raises(SerializationError, match=r"StepStarted\.timestamp: naive datetime"):
        CODEC.encode_event(StepStarted(datetime(2024, 1, 1)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backoff_coefficient": NAN}, "backoff_coefficient must be a finite number"),
        ({"backoff_coefficient": INF}, "backoff_coefficient must be a finite number"),
        ({"initial_interval": MAX_DURATION * 2}, r"RetryPolicy\.initial_interval must be"),
        ({"max_interval": MAX_DURATION * 2}, r"RetryPolicy\.max_interval must be"),
    ],
    ids=["nan-backoff", "inf-backoff", "huge-initial", "huge-max"],
)
def test_retry_policy_refuses_non_finite_backoff_and_unbounded_intervals(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_delay_never_overflows_even_after_thousands_of_attempts() -> None:
    """Without max_interval the delay is capped at MAX_DURATION instead of raising
    OverflowError from ``backoff ** attempt`` inside a workflow step."""
    policy = RetryPolicy(max_attempts=10_000, backoff_coefficient=10.0)
    assert policy.next_delay(5_000, FAILURE) == MAX_DURATION
    assert policy.next_delay(1, FAILURE) == timedelta(seconds=1)


@pytest.mark.parametrize("lease", [NAN, INF, 1e300, 0.0, -1.0])
def test_worker_options_refuse_a_lease_no_activity_lease_message_could_carry(
    lease: float,
) -> None:
    with pytest.raises(FieldRangeError, match=r"WorkerOptions\.activity_lease"):
        WorkerOptions(activity_lease=lease)
