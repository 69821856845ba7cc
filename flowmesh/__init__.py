"""flowmesh: durable workflows that span many applications.

A workflow is deterministic ``async`` code hosted by one app ID; each activity or child
workflow it calls may run on another app ID, each with its own RabbitMQ work queue. Hosting
apps keep histories in Redis and advance workflows by replaying them.

``import flowmesh`` is cheap: it does not import aio-pika or redis (those load when a worker
or client connects).
"""

from flowmesh._app import App
from flowmesh._errors import (
    ActivityFailedError,
    ActivityTimeoutError,
    AppUnavailableError,
    ChildWorkflowFailedError,
    ConfigurationError,
    DecodeError,
    FlowmeshError,
    InvalidInstanceIdError,
    NonDeterminismError,
    NonRetryableError,
    PayloadTooLargeError,
    PublishTimeoutError,
    RegistrationError,
    SerializationError,
    StoreError,
    TaskCancelledError,
    TaskFailedError,
    TransportError,
    UnknownNameError,
    UnroutableError,
    ValidationError,
    VersionConflictError,
    WorkflowAlreadyExistsError,
    WorkflowFailedError,
    WorkflowNotFinishedError,
    WorkflowNotFoundError,
)
from flowmesh.client import Client, ClientOptions, WorkflowHandle
from flowmesh.engine import Task, WorkflowContext
from flowmesh.model import FailureDetails, PendingTask, RetryPolicy, WorkflowState, WorkflowStatus
from flowmesh.runtime import ActivityContext, Worker, WorkerOptions

__version__ = "0.1.0"

__all__ = [
    "ActivityContext",
    "ActivityFailedError",
    "ActivityTimeoutError",
    "App",
    "AppUnavailableError",
    "ChildWorkflowFailedError",
    "Client",
    "ClientOptions",
    "ConfigurationError",
    "DecodeError",
    "FailureDetails",
    "FlowmeshError",
    "InvalidInstanceIdError",
    "NonDeterminismError",
    "NonRetryableError",
    "PayloadTooLargeError",
    "PendingTask",
    "PublishTimeoutError",
    "RegistrationError",
    "RetryPolicy",
    "SerializationError",
    "StoreError",
    "Task",
    "TaskCancelledError",
    "TaskFailedError",
    "TransportError",
    "UnknownNameError",
    "UnroutableError",
    "ValidationError",
    "VersionConflictError",
    "Worker",
    "WorkerOptions",
    "WorkflowAlreadyExistsError",
    "WorkflowContext",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowNotFinishedError",
    "WorkflowNotFoundError",
    "WorkflowState",
    "WorkflowStatus",
]
