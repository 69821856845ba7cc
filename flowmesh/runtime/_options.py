"""Tunable settings of a worker replica, grouped in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from flowmesh.model import check_lease_seconds


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker replica consumes, retries and sweeps.

    Defaults suit production; the embedded test environment stretches the polling intervals
    because nothing outside its process can create timers or leave outbox entries behind.
    """

    concurrency: int = 100
    """Activities running at once in this replica (also the work queue prefetch, which bounds
    the starts a hosting replica steps at once). Sized for throughput: each step and each
    activity reply waits on Redis or on a publisher confirm, so a replica needs many in flight
    to keep its CPU busy (W1 of ``make bench`` on 2 cores: 283-424 workflows/s with 16,
    407-626 with 100; bench/README.md). ``def`` activities get a thread pool of this size,
    whose threads start only when needed."""
    reply_prefetch: int = 256
    """Unsettled reply-queue deliveries; results for one instance are applied in batches.
    Lowered to fit ``reply_buffer_bytes`` (RabbitMQ cannot limit a prefetch by bytes)."""
    reply_buffer_bytes: int = 1024 * 1024 * 1024
    """Bound on the bytes of unsettled reply deliveries a replica holds: the reply prefetch
    is at most this divided by the codec's ``max_message_bytes`` (1 GiB / 4 MiB = 256 by
    default). Set the broker's ``max_message_size`` to the codec's limit so that no delivery
    is larger (deploy/rabbitmq/flowmesh.conf); the work queue holds at most ``concurrency``
    deliveries of that size in addition."""
    max_history_events: int = 100_000
    """A run whose history has reached this many events fails at its next step (so by at
    most one step's events more), with error type ``flowmesh.HistoryLimitExceeded`` and a
    message that says to use ``continue_as_new``. Replaying a long history costs time and
    memory on every cache miss, and Redis keeps it in one list."""
    max_deliveries: int = 5
    """An activity task delivered more often than this (its worker kept dying) fails."""
    conflict_retries: int = 20
    """Attempts of one step when other replicas keep committing first."""
    timer_poll_interval: float = 1.0
    """Longest sleep of the timer poller in seconds (bounds the delay of other replicas' timers)."""
    timer_lease: timedelta = timedelta(seconds=30)
    """How long a claimed timer is hidden from other replicas before it can fire again."""
    outbox_sweep_interval: float = 5.0
    """How often committed-but-unpublished messages are looked for (after a crash)."""
    outbox_max_backoff: float = 300.0
    """Longest wait between retries of an outbox message that failed to publish (a target
    the broker refuses or cannot route); the wait doubles from ``outbox_sweep_interval``."""
    unknown_name_max_backoff: float = 30.0
    """Longest wait before retrying a task whose activity/workflow is not registered here
    (the wait doubles per attempt from 1 s; attempts are counted in the message)."""
    transient_retry_max_backoff: float = 10.0
    """Longest wait before retrying a step the store or broker failed (the wait doubles per
    attempt from 0.25 s): how late after an outage's end its messages are processed."""
    hold_unknown_for: float = 600.0
    """Seconds an event or control message for an instance that does not exist yet is held
    (it may have overtaken the start) before it is dead-lettered."""
    execution_cache_size: int = 10_000
    """Live workflow executions kept per replica so a step replays only new events."""
    drain_timeout: float = 30.0
    """On shutdown, how long in-flight work may finish before it is handed back."""
    publish_retries: int = 3
    """Immediate attempts to publish a step's outbox before leaving it to the sweeper."""
    ack_deadline: float | None = 600.0
    """Seconds an activity may hold its broker delivery; a longer one acks it and runs on a
    lease renewed with the host (RabbitMQ's ``consumer_timeout`` defaults to 30 minutes and
    would otherwise cancel the delivery). None holds deliveries indefinitely."""
    activity_lease: float = 300.0
    """Lease of a long activity (renewed every third of it); the host re-dispatches the task
    if no renewal arrives in time (the worker died)."""
    crash_at: str | None = None
    """Test-only: SIGKILL the process at this crash point (see ``runtime._crash``)."""
    app_user_pattern: str | None = None
    """Broker user naming of apps, e.g. ``"fm-{app}"``: turns on sender checks. Every message
    must then carry a broker-verified ``user_id``, and is accepted only from the user allowed
    to send it (``flowmesh.security.SenderPolicy``); others are dead-lettered. Users that do
    not match the pattern are clients."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not self.hold_unknown_for > 0:  # also refuses NaN
            raise ValueError("hold_unknown_for must be > 0 seconds")
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
        if self.reply_prefetch < 1 or self.reply_buffer_bytes < 1:
            raise ValueError("reply_prefetch and reply_buffer_bytes must be >= 1")
        if self.max_history_events < 10:
            raise ValueError("max_history_events must be >= 10")
        # Sent in every ActivityLease, so it must pass the message's own check.
        check_lease_seconds(self, "activity_lease", self.activity_lease)
