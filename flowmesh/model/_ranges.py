"""Value ranges of the model's numeric and time fields, checked when an object is built.

A wire message or stored event is decoded by calling its dataclass's constructor, so a
``__post_init__`` that calls these checks refuses an out-of-range value at the decoding
boundary (the codec turns :class:`FieldRangeError` into a ``DecodeError`` naming the field)
and equally when Python code builds the object. Without them a NaN lease or a timestamp near
``datetime.max`` decodes fine and raises later, inside a workflow step, where it takes every
message of the step's batch with it.

Only the range is checked here. A value of another type (a str seq, a naive datetime) is left
to the codec, which refuses it with the wire type it expected; that keeps one place per rule.
The table of rules is in docs/protocol-codec.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from flowmesh._errors import ValidationError

MAX_SEQ: Final = 2**53 - 1
"""Largest task sequence number, attempt, history length or version.

The largest integer a double holds exactly: Redis's Lua numbers and many JSON readers are
doubles, and sequence numbers appear in store keys, timer members and message IDs.
"""

MAX_LEASE_SECONDS: Final = 365 * 24 * 3600.0
"""Longest activity lease (one year); the runtime's default is five minutes."""

MIN_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""Earliest timestamp a model field may hold (timer scores are milliseconds since then)."""

MAX_TIME: Final = datetime(9000, 1, 1, tzinfo=UTC)
"""Bound (exclusive) on timestamps: leaves about 1,000 years below ``datetime.max``, so adding
any duration the runtime computes (at most :data:`MAX_DURATION`) to a stored time never
overflows."""

MAX_DURATION: Final = timedelta(days=36_525)
"""Longest duration a retry policy may ask for (100 years)."""


class FieldRangeError(ValidationError):
    """A model field holds a value outside the range that makes sense for it.

    ``field`` is the field name and ``rule`` the violated rule with the value, so the codec
    can report ``field 'lease_seconds': must be ...`` at the right path of a nested object.
    """

    def __init__(self, owner: object, field: str, rule: str, value: object) -> None:
        shown = value.isoformat() if isinstance(value, datetime) else repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        self.field = field
        self.rule = f"{rule}, got {shown}"
        super().__init__(f"{type(owner).__name__}.{field} {self.rule}")


def check_seq(owner: object, field: str, value: int) -> None:
    """Refuse a task sequence number (or count) outside ``0 .. MAX_SEQ``."""
    if isinstance(value, int) and not 0 <= value <= MAX_SEQ:
        raise FieldRangeError(owner, field, f"must be between 0 and {MAX_SEQ}", value)


def check_timer_seq(owner: object, field: str, value: int) -> None:
    """Refuse a store timer seq outside ``-(MAX_SEQ + 1) .. MAX_SEQ``.

    Negative seqs are lease timers: ``-(seq + 1)`` for activity ``seq`` (docs/protocol.md).
    """
    if isinstance(value, int) and not -MAX_SEQ - 1 <= value <= MAX_SEQ:
        raise FieldRangeError(owner, field, f"must be between {-MAX_SEQ - 1} and {MAX_SEQ}", value)


MAX_PAGE_BYTES: Final = 1 << 30
"""Largest page of history a ``HistoryRequest`` may ask for (the host sends at most what fits
in one message anyway)."""


def check_page_bytes(owner: object, field: str, value: int) -> None:
    """Refuse a page size outside ``1 .. MAX_PAGE_BYTES`` bytes."""
    if isinstance(value, int) and not 1 <= value <= MAX_PAGE_BYTES:
        raise FieldRangeError(owner, field, f"must be between 1 and {MAX_PAGE_BYTES}", value)


def check_attempt(owner: object, field: str, value: int) -> None:
    """Refuse an attempt number outside ``1 .. MAX_SEQ`` (attempts are 1-based)."""
    if isinstance(value, int) and not 1 <= value <= MAX_SEQ:
        raise FieldRangeError(owner, field, f"must be between 1 and {MAX_SEQ}", value)


def check_lease_seconds(owner: object, field: str, value: float) -> None:
    """Refuse a lease that is not a finite number of seconds in ``(0, MAX_LEASE_SECONDS]``."""
    # Every comparison with NaN is False, so NaN fails this test like inf and 1e300 do.
    if isinstance(value, int | float) and not 0 < value <= MAX_LEASE_SECONDS:
        raise FieldRangeError(
            owner,
            field,
            f"must be a finite number of seconds, more than 0 and at most "
            f"{MAX_LEASE_SECONDS:.0f} (365 days)",
            value,
        )


def check_time(owner: object, field: str, value: datetime | None) -> None:
    """Refuse an aware datetime outside ``[MIN_TIME, MAX_TIME)``; None passes."""
    # Naive datetimes are the codec's to refuse (it names the wire form it needs).
    if (
        isinstance(value, datetime)
        and value.utcoffset() is not None
        and not MIN_TIME <= value < MAX_TIME
    ):
        raise FieldRangeError(
            owner,
            field,
            "must be at or after 1970-01-01T00:00:00Z and before 9000-01-01T00:00:00Z",
            value,
        )


def check_duration(owner: object, field: str, value: timedelta | None) -> None:
    """Refuse a duration outside ``(0, MAX_DURATION]``; None passes."""
    if isinstance(value, timedelta) and not timedelta(0) < value <= MAX_DURATION:
        raise FieldRangeError(
            owner, field, "must be more than 0 and at most 36525 days (100 years)", value
        )
