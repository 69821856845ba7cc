"""Who may send what: checking a message's sender against the broker-verified ``user_id``.

RabbitMQ refuses a message whose ``user_id`` property differs from the publishing
connection's user, and flowmesh sets it on every message, so a receiver knows which broker user
sent each delivery. With per-app users named by a pattern (``fm-{app}`` by default,
:class:`AppUsers`), the user also names the sending *app*; any other user is a *client*
(``flowmesh start``, a service using :class:`~flowmesh.Client`).

A receiving app R then accepts (:class:`SenderPolicy`):

========================================  ==================================================
Message                                   Accepted from
========================================  ==================================================
anything                                  R's own user (its replicas, its timer poller)
``ActivityTask`` (work queue)             the app named in ``host_app_id``
``ActivityCancel`` (work queue)           the app named in ``host_app_id``
``StartWorkflow`` with a parent           the parent's app (``parent.app_id``)
``StartWorkflow`` without a parent        clients
``ActivityResult``/``Lease``/``TaskNote`` the app the task was sent to (checked against R's
                                          history: the open task ``seq``'s app)
``ChildResult``                           the app hosting the child at ``seq`` (history)
``Control``                               clients; the parent's app for a child instance
``RaiseEvent``                            clients; an app X (a workflow's ``ctx.send_event``)
                                          if its ``event_id`` starts with ``X/``
``Describe``, ``HistoryRequest``          clients
``TimerDue``                              R only
========================================  ==================================================

So an app allowed (by the security plan's topic permissions) to return results to R cannot
forge results of tasks R sent elsewhere, fire R's timers, raise events under another app's
event IDs, or terminate R's workflows; a client cannot forge results or child starts. A
refused message is dead-lettered with the reason. The checks are off unless a pattern is configured
(``WorkerOptions.app_user_pattern``, ``flowmesh worker --app-user-pattern``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flowmesh._errors import ConfigurationError
from flowmesh.model import (
    ActivityCancel,
    ActivityLease,
    ActivityResult,
    ActivityTask,
    ChildResult,
    Control,
    Describe,
    HistoryRequest,
    Message,
    ParentRef,
    RaiseEvent,
    StartWorkflow,
    TaskNote,
    TimerDue,
    check_app_id,
)

__all__ = ["DEFAULT_APP_USER_PATTERN", "AppUsers", "SenderPolicy"]

DEFAULT_APP_USER_PATTERN = "fm-{app}"
"""Broker and Redis user of app ``X``: ``fm-X``."""

_TASK_REPLIES = (ActivityResult, ActivityLease, TaskNote)


@dataclass(frozen=True, slots=True)
class AppUsers:
    """The naming convention that maps an app ID to its user name and back.

    ``pattern`` contains ``{app}`` once, e.g. ``fm-{app}`` or ``prod-{app}-svc``.
    """

    pattern: str = DEFAULT_APP_USER_PATTERN

    def __post_init__(self) -> None:
        if self.pattern.count("{app}") != 1 or any(
            c in self.pattern.replace("{app}", "") for c in "{}\t\n\r "
        ):
            raise ConfigurationError(
                f"app user pattern {self.pattern!r} must contain '{{app}}' exactly once and no "
                "other braces or whitespace"
            )

    def user(self, app_id: str) -> str:
        """The user name of ``app_id``."""
        return self.pattern.replace("{app}", check_app_id(app_id))

    def app(self, user: str) -> str | None:
        """The app ID ``user`` belongs to, or None if ``user`` is not an app user (a client)."""
        prefix, _, suffix = self.pattern.partition("{app}")
        if len(user) <= len(prefix) + len(suffix):
            return None
        if not (user.startswith(prefix) and user.endswith(suffix)):
            return None
        candidate = user[len(prefix) : len(user) - len(suffix)]
        try:
            return check_app_id(candidate)
        except ValueError:
            return None

    def is_app_user(self, user: str) -> bool:
        """Whether ``user`` is named like an app's user."""
        return self.app(user) is not None


class SenderPolicy:
    """The sender rules of app ``app_id`` (see the module docstring).

    :meth:`refuse` needs only the message; :meth:`refuse_for_instance` also needs what the
    receiving app's history says about the instance (which app each open task went to).
    Both return a reason to refuse, or None.
    """

    def __init__(self, app_id: str, users: AppUsers) -> None:
        self.app_id = app_id
        self.users = users

    def sender(self, user_id: str) -> str | None:
        """The app behind ``user_id`` (None for a client)."""
        return self.users.app(user_id)

    def refuse(self, user_id: str, message: Message) -> str | None:
        """A reason to refuse ``message`` from ``user_id`` that needs no workflow state."""
        if not user_id:
            return "message carries no user_id, so its sender cannot be verified"
        sender = self.sender(user_id)
        if sender == self.app_id:
            return None
        who = f"user {user_id!r}" + (f" (app {sender!r})" if sender else " (a client)")
        match message:
            case ActivityTask(host_app_id=host) | ActivityCancel(host_app_id=host) if (
                sender != host
            ):
                return f"{type(message).__name__} claims host app {host!r} but comes from {who}"
            case StartWorkflow(parent=ParentRef(app_id=parent)) if sender != parent:
                return f"child StartWorkflow claims parent app {parent!r} but comes from {who}"
            case StartWorkflow(parent=None) if sender is not None:
                return (
                    f"StartWorkflow from {who}: apps start other apps' workflows only as "
                    "children; a service starting workflows needs a client user"
                )
            case ActivityResult() | ActivityLease() | TaskNote() | ChildResult() if sender is None:
                return f"{type(message).__name__} from {who}: only apps send results"
            case TimerDue():
                return f"TimerDue from {who}: only app {self.app_id!r} fires its own timers"
            case RaiseEvent(event_id=event_id) if sender is not None and not event_id.startswith(
                f"{sender}/"
            ):
                # An app's workflow sends events (ctx.send_event) with IDs it cannot choose
                # freely: "<its app>/<instance>/<run>#<seq>", so it never records-once away
                # another sender's event.
                return (
                    f"RaiseEvent from {who} with event ID {event_id!r}: an app's events carry "
                    f"IDs starting with {sender + '/'!r}"
                )
            case Describe() | HistoryRequest() if sender is not None:
                return f"{type(message).__name__} from {who}: only clients send it"
        return None

    def refuse_for_instance(
        self,
        user_id: str,
        message: Message,
        *,
        task_apps: Mapping[int, str],
        child_apps: Mapping[str, str],
        parent: ParentRef | None,
    ) -> str | None:
        """A reason to refuse ``message``, given the instance's state in this app's history.

        ``task_apps``: open task seq -> the app it was sent to; ``child_apps``: child instance
        -> its app; ``parent``: the instance's parent. Messages about tasks that are not open
        pass (the engine drops them as duplicates).
        """
        sender = self.sender(user_id)
        if sender is None or sender == self.app_id:
            return None
        match message:
            case ActivityResult(seq=seq) | ActivityLease(seq=seq) | TaskNote(seq=seq) if (
                seq in task_apps and task_apps[seq] != sender
            ):
                return (
                    f"{type(message).__name__} for task {seq} comes from app {sender!r}, but the "
                    f"task was sent to app {task_apps[seq]!r}"
                )
            case ChildResult(seq=seq, child_instance_id=child):
                expected = task_apps.get(seq) or child_apps.get(child)
                if expected is not None and expected != sender:
                    return (
                        f"ChildResult for {child!r} comes from app {sender!r}, but that child "
                        f"runs on app {expected!r}"
                    )
            case Control() if parent is None or parent.app_id != sender:
                parent_app = parent.app_id if parent else None
                return (
                    f"Control from app {sender!r}, which is not the parent of this instance "
                    f"(its parent app: {parent_app!r})"
                )
        return None

    @staticmethod
    def is_instance_message(message: Message) -> bool:
        """Whether :meth:`refuse_for_instance` has anything to check for ``message``."""
        return isinstance(message, (*_TASK_REPLIES, ChildResult, Control))
