"""Purging a finished instance (and, asked recursively, its children)."""

from __future__ import annotations

from typing import Any

from flowmesh.codec import Codec
from flowmesh.model import ChildWorkflowScheduled, Control, ControlAction
from flowmesh.runtime._live import Live
from flowmesh.store import WorkflowStore
from flowmesh.transport import Outgoing, QueueKind, Transport


async def purge_instance(
    instance_id: str,
    live: Live | None,
    message: Control,
    *,
    store: WorkflowStore,
    transport: Transport,
    codec: Codec,
    log: Any,
) -> bool:
    """Purge ``instance_id`` if it exists and has finished (an unfinished one is left as is,
    with a warning); a recursive purge is sent on to the children it started. Returns True
    if the instance was purged."""
    if live is None:
        return False
    if not live.state.status.is_terminal:
        log.warning(
            "purge refused: instance is not finished",
            instance_id=instance_id,
            status=live.state.status.value,
        )
        return False
    if message.recursive:
        children = [e for e in live.history if isinstance(e, ChildWorkflowScheduled)]
        await transport.publish(
            [
                Outgoing(
                    c.app_id,
                    QueueKind.REPLY,
                    codec.encode_message(
                        Control(c.instance_id, ControlAction.PURGE, recursive=True)
                    ),
                )
                for c in children
            ]
        )
    await store.purge(instance_id)
    log.info("instance purged", instance_id=instance_id)
    return True
