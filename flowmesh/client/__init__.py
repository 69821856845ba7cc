"""The client: start and control workflows through the broker only."""

from flowmesh.client._client import Client, ClientOptions
from flowmesh.client._handle import PurgeCount, WorkflowHandle

__all__ = ["Client", "ClientOptions", "PurgeCount", "WorkflowHandle"]
