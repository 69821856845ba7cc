"""The flowmesh error hierarchy.

Every error flowmesh raises derives from :class:`FlowmeshError`::

    FlowmeshError
    ├── ConfigurationError          bad settings, unsafe server configuration
    ├── SerializationError          a value cannot be encoded (names its type and origin)
    │   └── PayloadTooLargeError    an encoded payload exceeds the configured limit
    ├── DecodeError                 bytes from the broker or store are not a valid message
    ├── RegistrationError           duplicate or invalid workflow/activity registration
    ├── UnknownNameError            a workflow or activity name no app registers
    ├── ValidationError             a malformed argument (also a ValueError)
    │   └── InvalidInstanceIdError  a malformed instance ID
    ├── WorkflowAlreadyExistsError  starting an instance ID that already exists
    ├── WorkflowNotFoundError       no such instance
    ├── WorkflowNotFinishedError    purge or same-ID restart of an instance still running
    ├── NonDeterminismError         replay diverged from history (both sides in the message)
    ├── WorkflowFailedError         a workflow's result was requested and it failed
    ├── TaskFailedError             base of errors a workflow sees from its tasks
    │   ├── ActivityFailedError
    │   │   └── ActivityTimeoutError  (also a TimeoutError)
    │   └── ChildWorkflowFailedError
    ├── TaskCancelledError          a task the workflow cancelled (``Task.cancel()``)
    ├── NonRetryableError           raised by an activity to stop retries
    ├── StoreError                  the workflow store failed
    │   └── VersionConflictError    another writer committed first (single-writer check)
    ├── AppUnavailableError         no replica of an app answered in time (also a TimeoutError)
    └── TransportError              the broker failed
        ├── PublishTimeoutError     no publisher confirm in time
        └── UnroutableError         the broker could not route a mandatory message

``TimeoutError`` (the builtin) is what a workflow sees when an activity or an external
event times out, and what ``WorkflowHandle.result(timeout=...)`` raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowmesh._failures import FailureDetails


class FlowmeshError(Exception):
    """Base class of every error flowmesh raises."""


class ConfigurationError(FlowmeshError):
    """Settings are invalid, or a server is configured unsafely."""


class SerializationError(FlowmeshError):
    """A value cannot be encoded; the message names the value's type and where it came from."""


class PayloadTooLargeError(SerializationError):
    """An encoded payload is larger than the configured limit."""


class DecodeError(FlowmeshError):
    """Bytes read from the broker or the store are not a valid flowmesh message."""


class RegistrationError(FlowmeshError):
    """A workflow or activity was registered twice or is not a valid function."""


class UnknownNameError(FlowmeshError):
    """A workflow or activity name is not registered by the app asked to run it."""


class ValidationError(FlowmeshError, ValueError):
    """An argument is malformed (an app ID, a name, an option value)."""


class InvalidInstanceIdError(ValidationError):
    """An instance ID is empty, too long or contains characters outside the allowed set."""


class WorkflowAlreadyExistsError(FlowmeshError):
    """A workflow with this instance ID already exists (purge a finished one to reuse its ID)."""


class WorkflowNotFoundError(FlowmeshError):
    """No workflow instance with this ID exists on the app asked."""


class WorkflowNotFinishedError(FlowmeshError):
    """The instance has not finished (it runs, waits or is suspended), so it cannot be purged
    or restarted under its own ID: terminate it first, or restart it under a new ID."""


class NonDeterminismError(FlowmeshError):
    """Replaying a workflow's code produced a different step than its history records."""


class TaskFailedError(FlowmeshError):
    """A task awaited by a workflow failed; ``failure`` carries the remote error's details."""

    def __init__(self, message: str, failure: FailureDetails) -> None:
        super().__init__(message)
        self.failure = failure

    @property
    def error_type(self) -> str:
        """Qualified type name of the remote error."""
        return self.failure.error_type

    @property
    def remote_stack(self) -> str:
        """The remote error's formatted stack trace."""
        return self.failure.stack_trace


class ActivityFailedError(TaskFailedError):
    """An activity failed after its retry policy gave up."""


class ActivityTimeoutError(ActivityFailedError, TimeoutError):
    """An activity attempt did not finish within its ``timeout`` (``except TimeoutError`` works)."""


class ChildWorkflowFailedError(TaskFailedError):
    """A child workflow failed or was terminated."""


class TaskCancelledError(FlowmeshError):
    """The task was cancelled by the workflow's own code (``Task.cancel()``): awaiting it
    raises this error."""


class WorkflowFailedError(FlowmeshError):
    """Raised by ``WorkflowHandle.result()`` when the workflow failed or was terminated."""

    def __init__(self, message: str, failure: FailureDetails | None) -> None:
        super().__init__(message)
        self.failure = failure


class NonRetryableError(FlowmeshError):
    """Raise from an activity to fail it at once, whatever its retry policy says."""


class StoreError(FlowmeshError):
    """The workflow store could not complete an operation."""


class VersionConflictError(StoreError):
    """Another writer advanced the history first; reload and run the step again.

    ``stored_version`` is the version the store holds (it survives a purge, so a new run of
    a purged instance ID continues the numbering instead of starting again at 1).
    """

    def __init__(self, message: str, *, stored_version: int = 0) -> None:
        super().__init__(message)
        self.stored_version = stored_version


class TransportError(FlowmeshError):
    """The message broker could not complete an operation."""


class PublishTimeoutError(TransportError):
    """The broker did not confirm a publish within the timeout."""


class UnroutableError(TransportError):
    """The broker returned a mandatory message: no queue is bound for its destination."""


class AppUnavailableError(FlowmeshError, TimeoutError):
    """No replica of the app answered a request in time (is one running?)."""
