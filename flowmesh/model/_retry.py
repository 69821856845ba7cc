"""Retry policies for activities and child workflows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from flowmesh._failures import FailureDetails
from flowmesh.model._ranges import MAX_DURATION, check_duration


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how fast to retry a failed activity or child workflow.

    Attempt ``n`` (1-based) that fails is retried after
    ``min(initial_interval * backoff_coefficient ** (n - 1), max_interval)`` using a durable
    timer (without ``max_interval``, at most 100 years), until ``max_attempts`` attempts have
    run. Errors whose type is listed in ``non_retryable_errors`` (qualified or bare class
    name), or raised as ``NonRetryableError``, are not retried.

    ``retry_timeout`` is a budget for the whole series, measured in workflow time from when
    the first attempt was scheduled: no attempt starts (after its delay) later than that
    first start plus ``retry_timeout``, so the last error is raised instead. Deterministic,
    like every workflow time.
    """

    max_attempts: int = 3
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    max_interval: timedelta | None = None
    non_retryable_errors: tuple[str, ...] = ()
    retry_timeout: timedelta | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_interval <= timedelta(0):
            raise ValueError("RetryPolicy.initial_interval must be positive")
        # Written as ``not (...)`` so that NaN, which fails every comparison, is refused too.
        if not (1.0 <= self.backoff_coefficient < math.inf):
            raise ValueError(
                f"RetryPolicy.backoff_coefficient must be a finite number >= 1.0, "
                f"got {self.backoff_coefficient!r}"
            )
        check_duration(self, "initial_interval", self.initial_interval)
        check_duration(self, "max_interval", self.max_interval)
        check_duration(self, "retry_timeout", self.retry_timeout)
        if self.max_interval is not None and self.max_interval < self.initial_interval:
            raise ValueError("RetryPolicy.max_interval must be >= initial_interval")
        # A list passed by the caller would make the frozen dataclass unhashable.
        object.__setattr__(self, "non_retryable_errors", tuple(self.non_retryable_errors))

    def next_delay(
        self, attempt: int, failure: FailureDetails, *, elapsed: timedelta = timedelta(0)
    ) -> timedelta | None:
        """Delay before the attempt after ``attempt`` failed with ``failure``; None to give up.

        ``elapsed``: workflow time since the first attempt was scheduled; with
        ``retry_timeout``, an attempt that would start after the budget is not made.
        """
        if attempt >= self.max_attempts or failure.non_retryable:
            return None
        if any(failure.matches(name) for name in self.non_retryable_errors):
            return None
        try:
            growth = self.backoff_coefficient ** (attempt - 1)
        except OverflowError:  # float ** int raises instead of returning inf
            growth = math.inf
        # Capped so that a long retry series never asks for a delay timedelta cannot hold.
        cap = self.max_interval if self.max_interval is not None else MAX_DURATION
        seconds = min(self.initial_interval.total_seconds() * growth, cap.total_seconds())
        delay = timedelta(seconds=seconds)
        if self.retry_timeout is not None and elapsed + delay > self.retry_timeout:
            return None
        return delay
