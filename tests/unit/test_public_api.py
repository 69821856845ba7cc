"""The public surface is exactly what the docs promise."""

from __future__ import annotations

import inspect

import flowmesh

DOCUMENTED = {
    # Authoring
    "App", "WorkflowContext", "ActivityContext", "RetryPolicy", "Task",
    # Client
    "Client", "ClientOptions", "WorkflowHandle", "WorkflowState", "WorkflowStatus",
    "PendingTask", "FailureDetails",
    # Running workers programmatically
    "Worker", "WorkerOptions",
    # Errors (one hierarchy under FlowmeshError)
    "FlowmeshError", "ConfigurationError", "SerializationError", "PayloadTooLargeError",
    "DecodeError", "RegistrationError", "UnknownNameError", "ValidationError",
    "InvalidInstanceIdError", "WorkflowAlreadyExistsError", "WorkflowNotFoundError",
    "WorkflowNotFinishedError", "NonDeterminismError", "WorkflowFailedError", "TaskFailedError",
    "ActivityFailedError", "ActivityTimeoutError", "ChildWorkflowFailedError",
    "TaskCancelledError", "NonRetryableError", "StoreError",
    "VersionConflictError", "TransportError", "PublishTimeoutError", "UnroutableError",
    "AppUnavailableError",
}  # fmt: skip


def test_all_is_exactly_the_documented_public_names() -> None:
    assert set(flowmesh.__all__) == DOCUMENTED
    assert len(flowmesh.__all__) == len(DOCUMENTED)  # no duplicates


def test_every_public_name_exists_and_has_a_docstring() -> None:
    for name in flowmesh.__all__:
        value = getattr(flowmesh, name)
        assert inspect.getdoc(value), f"flowmesh.{name} has no docstring"


def test_every_error_derives_from_flowmesh_error() -> None:
    errors = [getattr(flowmesh, n) for n in flowmesh.__all__ if n.endswith("Error")]
    assert all(issubclass(e, flowmesh.FlowmeshError) for e in errors)
    assert issubclass(flowmesh.ActivityTimeoutError, TimeoutError)
    assert issubclass(flowmesh.InvalidInstanceIdError, ValueError)


def test_pending_tasks_describe_themselves_in_one_readable_line() -> None:
    from flowmesh import PendingTask

    assert PendingTask("activity", "train", "gpu-trainer", 3).describe() == (
        "activity 'train' on app 'gpu-trainer' (seq 3)"
    )
    assert PendingTask("event", "approval").describe() == "event 'approval'"
    assert PendingTask("more", "1980 more tasks").describe() == "1980 more tasks"
