"""Where each kind of blob names the app and instance its protected values belong to.

A :class:`~flowmesh.codec.BoundPayloadCodec` binds every protected value to a
:class:`~flowmesh.codec.PayloadContext`: the app hosting the workflow instance, the instance
and the field. Both the writer and the reader must derive the same context, so each part comes
either from a plain (unencoded) field of the blob itself or from the caller, who knows it from
where the blob is going or was found:

* messages: the instance is ``instance_id`` (for :class:`ChildResult` the parent's, to whose
  app it is sent); the app is the one the envelope names (``StartWorkflow.app_id``,
  ``ActivityTask.host_app_id``, ``StateReply.state.app_id``), else the caller's ``app_id``: the
  app whose reply queue carries the message (``ActivityResult``, ``ChildResult``,
  ``RaiseEvent``);
* history events and workflow states: the caller's ``app_id`` and ``instance_id``, i.e. the
  store's app and the instance whose keys hold them.

docs/security-payloads.md documents the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from flowmesh.codec._payload import Path
from flowmesh.model import MESSAGE_TYPES, ActivityTask, StartWorkflow, StateReply

_HOST_APP_FIELD: Final[dict[type, Path]] = {
    StartWorkflow: ("app_id",),
    ActivityTask: ("host_app_id",),
    StateReply: ("state", "app_id"),
}


@dataclass(frozen=True, slots=True)
class Binding:
    """Paths of the hosting app and instance IDs in a kind's fields map (None: the caller's)."""

    app: Path | None
    instance: Path | None


def binding_of(cls: type) -> Binding:
    """The :class:`Binding` of blobs of class ``cls``."""
    if cls in MESSAGE_TYPES:
        return Binding(_HOST_APP_FIELD.get(cls), ("instance_id",))
    return Binding(None, None)  # history events and states: where the store keeps them


def lookup(body: object, path: Path) -> object:
    """The value at ``path`` in nested maps, or None where it is missing or not a map."""
    node = body
    for segment in path:
        if type(node) is not dict:
            return None
        node = node.get(segment)
    return node
