"""Sender checks (``WorkerOptions.app_user_pattern``) on the in-memory broker.

Each app's transport stamps its own ``user_id`` on what it publishes, as RabbitMQ's validated
``user_id`` property does; the real-broker side (RabbitMQ refusing a forged ``user_id``) is in
``test_permissions.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from flowmesh import ActivityContext, App, Client, ClientOptions, WorkflowContext, WorkflowStatus
from flowmesh._errors import ConfigurationError
from flowmesh.codec import Codec
from flowmesh.model import (
    ActivityCancel,
    ActivityCompleted,
    ActivityLease,
    ActivityResult,
    ActivityTask,
    ChildResult,
    Control,
    ControlAction,
    Describe,
    ParentRef,
    RaiseEvent,
    StartWorkflow,
    StateReply,
    TaskNote,
    TimerDue,
    WorkflowState,
)
from flowmesh.runtime import Worker, WorkerOptions
from flowmesh.security._senders import AppUsers, SenderPolicy
from flowmesh.store.memory import MemoryStore
from flowmesh.transport import Delivery, Outgoing, QueueKind
from flowmesh.transport.memory import MemoryBroker, MemoryTransport

PATTERN = "fm-{app}"
CODEC = Codec()

host = App("s-host")
left = App("s-left")
right = App("s-right")


@host.workflow
async def two_steps(ctx: WorkflowContext, text: str) -> dict[str, object]:
    first = await ctx.call_activity("shout", text, app_id="s-left")
    second = await ctx.call_activity("seal", first, app_id="s-right")
    approved = await ctx.wait_for_external_event("approve")
    return {"value": second, "approved": approved}


@left.activity
def shout(ctx: ActivityContext, text: str) -> str:
    return text.upper()


@right.activity
def seal(ctx: ActivityContext, text: str) -> str:
    return f"[{text}]"


# -- the policy on its own ---------------------------------------------------------------------


def test_app_users_map_apps_to_user_names_and_back() -> None:
    users = AppUsers("prod-{app}-svc")
    assert users.user("app1") == "prod-app1-svc"
    assert users.app("prod-app1-svc") == "app1"
    assert users.app("prod--svc") is None
    assert users.app("prod-App1-svc") is None  # not a valid app ID: a client
    assert users.app("ops") is None
    assert AppUsers().app("fm-gpu-trainer") == "gpu-trainer"
    with pytest.raises(ConfigurationError):
        AppUsers("fm-app")
    with pytest.raises(ConfigurationError):
        AppUsers("{app}-{app}")


POLICY = SenderPolicy("app1", AppUsers(PATTERN))
PARENT = ParentRef("root-1", "app0", 3)


@pytest.mark.parametrize(
    ("user", "message", "refused"),
    [
        ("fm-app1", TimerDue("i", 1), False),  # own user: anything
        ("fm-app2", TimerDue("i", 1), True),
        ("ops", TimerDue("i", 1), True),
        ("", RaiseEvent("i", "go"), True),  # no user_id at all
        ("ops", RaiseEvent("i", "go"), False),
        ("fm-app2", RaiseEvent("i", "go"), True),  # an app's event needs an ID of its own
        ("fm-app2", RaiseEvent("i", "go", event_id="app2/wf-1/r1#3"), False),  # send_event
        ("fm-app2", RaiseEvent("i", "go", event_id="app3/wf-1/r1#3"), True),  # another's ID
        ("fm-app2", RaiseEvent("i", "go", event_id="app2x/wf-1/r1#3"), True),
        ("fm-app0", ActivityCancel("i", "app0", "app1", 1, 1), False),
        ("fm-app2", ActivityCancel("i", "app0", "app1", 1, 1), True),
        ("ops", ActivityCancel("i", "app0", "app1", 1, 1), True),
        ("fm-app2", Describe("i"), True),
        ("ops", Describe("i"), False),
        ("ops", StartWorkflow("i", "wf", "app1"), False),
        ("fm-app2", StartWorkflow("i", "wf", "app1"), True),
        ("fm-app0", StartWorkflow("i", "wf", "app1", parent=PARENT), False),
        ("fm-app2", StartWorkflow("i", "wf", "app1", parent=PARENT), True),
        ("ops", StartWorkflow("i", "wf", "app1", parent=PARENT), True),
        ("fm-app0", ActivityTask("i", "app0", "app1", 1, 1, "act"), False),
        ("fm-app2", ActivityTask("i", "app0", "app1", 1, 1, "act"), True),
        ("ops", ActivityTask("i", "app0", "app1", 1, 1, "act"), True),
        ("ops", ActivityResult("i", 1, 1), True),
        ("ops", ChildResult("i", 1, "c"), True),
        ("ops", ActivityLease("i", 1, 1, 30.0), True),
        ("ops", TaskNote("i", 1, 1, "note"), True),
        ("fm-app2", ActivityResult("i", 1, 1), False),  # decided against the history
        ("ops", Control("i", ControlAction.TERMINATE), False),
        ("fm-app2", Control("i", ControlAction.TERMINATE), False),  # decided by the parent
    ],
)
def test_stateless_rules(user: str, message: object, refused: bool) -> None:
    assert (POLICY.refuse(user, message) is not None) is refused  # type: ignore[arg-type]


def test_instance_rules_compare_the_sender_with_the_task_in_history() -> None:
    tasks = {1: "app2", 2: "app3", 3: "", 4: "app5"}  # 3 is a timer, 4 a child
    children = {"child-4": "app5"}

    def refused(user: str, message: object, parent: ParentRef | None = None) -> bool:
        reason = POLICY.refuse_for_instance(
            user,
            message,  # type: ignore[arg-type]
            task_apps=tasks,
            child_apps=children,
            parent=parent,
        )
        return reason is not None

    assert not refused("fm-app2", ActivityResult("i", 1, 1))
    assert refused("fm-app2", ActivityResult("i", 2, 1))  # the task went to app3
    assert refused("fm-app2", ActivityResult("i", 3, 1))  # a timer
    assert refused("fm-app2", ActivityLease("i", 2, 1, 30.0))
    assert refused("fm-app2", TaskNote("i", 2, 1, "forged"))
    assert not refused("fm-app2", ActivityResult("i", 99, 1))  # not open: the engine drops it
    assert not refused("fm-app5", ChildResult("i", 4, "child-4"))
    assert refused("fm-app2", ChildResult("i", 4, "child-4"))
    assert refused("fm-app2", ChildResult("i", 4, "other"))
    assert not refused("fm-app1", ActivityResult("i", 2, 1))  # own user
    assert not refused("ops", Control("i", ControlAction.TERMINATE))
    assert refused("fm-app2", Control("i", ControlAction.TERMINATE))
    assert not refused("fm-app0", Control("i", ControlAction.PURGE), PARENT)
    assert refused("fm-app2", Control("i", ControlAction.PURGE), PARENT)


# -- workers on the in-memory broker -----------------------------------------------------------


@dataclass
class Mesh:
    """Apps on one in-memory broker, each publishing as its own user."""

    broker: MemoryBroker = field(default_factory=MemoryBroker)
    transports: dict[str, MemoryTransport] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    store: MemoryStore = field(default_factory=lambda: MemoryStore("s-host"))

    def transport(self, user: str) -> MemoryTransport:
        if user not in self.transports:
            self.transports[user] = MemoryTransport(self.broker, user_id=user)
        return self.transports[user]

    async def start(self, app: App) -> None:
        worker = Worker(
            app,
            transport=self.transport(f"fm-{app.app_id}"),
            store=self.store if app.hosts_workflows else None,
            codec=CODEC,
            options=WorkerOptions(app_user_pattern=PATTERN, drain_timeout=1.0),
        )
        await worker.start()
        self.workers.append(worker)

    def dead(self, app_id: str) -> list[str]:
        return [reason for _, reason in self.broker.dead_letters(app_id)]


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    built = Mesh()
    yield built
    for worker in built.workers:
        await worker.stop(timeout=1.0)
    for transport in built.transports.values():
        await transport.close()


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[Client]:
    async with Client(transport=mesh.transport("ops"), codec=CODEC) as connected:
        yield connected


async def waiting_for(client: Client, instance_id: str, app: str) -> int:
    """The seq of the task the instance waits for on ``app``."""
    handle = client.get_workflow(instance_id, app_id="s-host")
    for _ in range(200):
        state = await handle.describe()
        for task in state.waiting_on:
            if task.app_id == app:
                return task.seq
        await asyncio.sleep(0.01)
    raise AssertionError(f"{instance_id} never waited for {app}")


async def publish_as(mesh: Mesh, user: str, app_id: str, kind: QueueKind, message: object) -> None:
    body = CODEC.encode_message(message)  # type: ignore[arg-type]
    await mesh.transport(user).publish([Outgoing(app_id, kind, body)])


async def dead_letters(mesh: Mesh, app_id: str, count: int) -> list[str]:
    for _ in range(200):
        if len(reasons := mesh.dead(app_id)) >= count:
            return reasons
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} dead letters on {app_id}: {mesh.dead(app_id)}")


async def test_a_workflow_across_apps_runs_with_sender_checks_on(
    mesh: Mesh, client: Client
) -> None:
    for app in (host, left, right):
        await mesh.start(app)
    handle = await client.start_workflow("two_steps", "hi", app_id="s-host", instance_id="ok-1")
    await waiting_for_event(client, "ok-1")
    await handle.raise_event("approve", True)
    assert await handle.result(timeout=5) == {"value": "[HI]", "approved": True}
    assert mesh.dead("s-host") == []


async def waiting_for_event(client: Client, instance_id: str) -> None:
    handle = client.get_workflow(instance_id, app_id="s-host")
    for _ in range(200):
        if any(t.kind == "event" for t in (await handle.describe()).waiting_on):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the workflow never waited for its event")


async def test_a_result_forged_by_another_app_is_dead_lettered_not_applied(
    mesh: Mesh, client: Client
) -> None:
    """s-left may answer s-host, but not for the task s-host sent to s-right."""
    await mesh.start(host)
    await mesh.start(left)  # s-right is not running: its task waits
    await client.start_workflow("two_steps", "hi", app_id="s-host", instance_id="forge-1")
    seq = await waiting_for(client, "forge-1", "s-right")

    forged = ActivityResult("forge-1", seq, 1, output="FORGED")
    await publish_as(mesh, "fm-s-left", "s-host", QueueKind.REPLY, forged)
    reasons = await dead_letters(mesh, "s-host", 1)
    assert "sender refused" in reasons[0]
    assert "sent to app 's-right'" in reasons[0]

    record = await mesh.store.load("forge-1")
    assert record is not None
    assert not any(isinstance(e, ActivityCompleted) and e.seq == seq for e in record.history)

    await mesh.start(right)  # the real result still completes the workflow
    await waiting_for_event(client, "forge-1")
    handle = client.get_workflow("forge-1", app_id="s-host")
    await handle.raise_event("approve", "yes")
    assert await handle.result(timeout=5) == {"value": "[HI]", "approved": "yes"}


async def test_apps_may_not_fire_timers_raise_events_or_control_others_workflows(
    mesh: Mesh, client: Client
) -> None:
    await mesh.start(host)
    await mesh.start(left)
    await mesh.start(right)
    handle = await client.start_workflow("two_steps", "x", app_id="s-host", instance_id="ctl-1")
    await waiting_for_event(client, "ctl-1")

    for message in (
        TimerDue("ctl-1", 1),
        RaiseEvent("ctl-1", "approve", "forged"),
        Control("ctl-1", ControlAction.TERMINATE, "forged"),
    ):
        await publish_as(mesh, "fm-s-left", "s-host", QueueKind.REPLY, message)
    reasons = await dead_letters(mesh, "s-host", 3)
    assert all("sender refused" in reason for reason in reasons)
    assert (await handle.describe()).status is WorkflowStatus.RUNNING

    await handle.raise_event("approve", "real")  # from the client user: accepted
    result = await handle.result(timeout=5)
    assert isinstance(result, dict)
    assert result["approved"] == "real"


async def test_unsigned_and_foreign_work_is_refused(mesh: Mesh, client: Client) -> None:
    await mesh.start(host)
    await mesh.start(left)
    # A message without user_id (a transport that sets none) and a task claiming another host.
    await publish_as(
        mesh, "", "s-host", QueueKind.WORK, StartWorkflow("u-1", "two_steps", "s-host")
    )
    task = ActivityTask("u-2", "s-host", "s-left", 1, 1, "shout", "x")
    await publish_as(mesh, "fm-s-right", "s-left", QueueKind.WORK, task)
    assert "no user_id" in (await dead_letters(mesh, "s-host", 1))[0]
    assert "claims host app 's-host'" in (await dead_letters(mesh, "s-left", 1))[0]
    assert await mesh.store.load("u-1") is None


@pytest.mark.parametrize("pattern", ["fm-{app}", ""])
async def test_a_client_with_the_pattern_takes_answers_only_from_the_asked_apps_user(
    pattern: str,
) -> None:
    """Answers are checked against the asked app's user once the client knows the pattern.
    Here another app's user answers first with the right correlation ID (as if it had leaked):
    the client takes the real host's answer; without the pattern it would take the forgery."""
    broker = MemoryBroker()
    host = MemoryTransport(broker, user_id="fm-orders")
    other = MemoryTransport(broker, user_id="fm-evil")
    real = WorkflowState(instance_id="wf", app_id="orders", name="w", status=WorkflowStatus.RUNNING)
    forged = WorkflowState(
        instance_id="wf", app_id="orders", name="w", status=WorkflowStatus.COMPLETED
    )

    async def answer(delivery: Delivery) -> None:
        for transport, state in ((other, forged), (host, real)):
            body = CODEC.encode_message(StateReply("wf", state))
            await transport.send_reply(delivery.reply_to, delivery.correlation_id, body)
        await delivery.ack()

    await host.consume("orders", QueueKind.REPLY, answer, prefetch=1)
    client_transport = MemoryTransport(broker, user_id="ops")
    options = ClientOptions(app_user_pattern=pattern)
    async with Client(transport=client_transport, options=options) as client:
        state = await client.get_workflow("wf", app_id="orders").describe()
    assert state.status is (WorkflowStatus.RUNNING if pattern else WorkflowStatus.COMPLETED)
    for transport in (host, other, client_transport):
        await transport.close()
